package supervise

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
)

//go:embed page/index.html page/login.html page/status.css page/status.js
var pageFiles embed.FS

// Page is the self-contained HTML status page: one document with its CSS
// and JS inlined (no CDN, no other request than /status), and the
// Content-Security-Policy that allows exactly those inline blocks. Build it
// once with NewPage; it is immutable.
type Page struct {
	// Status is the status page. It embeds no data and no secret: its
	// script fetches /status.
	Status []byte
	// Login is the sign-in form shown to unauthorized browsers when
	// admin.token is set. It POSTs the token to /.
	Login []byte
	// CSP is the Content-Security-Policy header value for both.
	CSP string
}

// NewPage assembles the page from the embedded files.
func NewPage() *Page {
	read := func(name string) []byte {
		b, err := pageFiles.ReadFile(name)
		if err != nil {
			panic("supervise: embedded page file missing: " + name) // a build defect, not outside input
		}
		return b
	}
	css, js := read("page/status.css"), read("page/status.js")
	fill := func(html []byte) []byte {
		html = bytes.Replace(html, []byte("/*STYLE*/"), css, 1)
		return bytes.Replace(html, []byte("/*SCRIPT*/"), js, 1)
	}
	return &Page{
		Status: fill(read("page/index.html")),
		Login:  fill(read("page/login.html")),
		CSP: "default-src 'none'; script-src '" + hash(js) + "'; style-src '" + hash(css) + "'; " +
			"connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
	}
}

func hash(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}
