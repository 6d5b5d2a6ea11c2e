package supervise

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

func TestPageIsSelfContained(t *testing.T) {
	p := NewPage()
	for name, html := range map[string][]byte{"status": p.Status, "login": p.Login} {
		if bytes.Contains(html, []byte("/*STYLE*/")) || bytes.Contains(html, []byte("/*SCRIPT*/")) {
			t.Errorf("%s page still has a placeholder", name)
		}
		if regexp.MustCompile(`(?i)(src|href)=["']?(https?:)?//`).Match(html) {
			t.Errorf("%s page loads something from another origin", name)
		}
	}
	if !bytes.Contains(p.Status, []byte("fetch('/status'")) {
		t.Error("the status page must fetch /status")
	}
}

// The CSP must allow exactly the inline blocks the pages carry, or the
// browser runs none of them.
func TestPageCSPMatchesInlineBlocks(t *testing.T) {
	p := NewPage()
	block := func(html []byte, tag string) []byte {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindSubmatch(html)
		if m == nil {
			t.Fatalf("no <%s> block", tag)
		}
		return m[1]
	}
	sum := func(b []byte) string {
		h := sha256.Sum256(b)
		return "'sha256-" + base64.StdEncoding.EncodeToString(h[:]) + "'"
	}
	if want := "script-src " + sum(block(p.Status, "script")); !strings.Contains(p.CSP, want) {
		t.Errorf("CSP %q lacks %q", p.CSP, want)
	}
	for _, html := range [][]byte{p.Status, p.Login} {
		if want := "style-src " + sum(block(html, "style")); !strings.Contains(p.CSP, want) {
			t.Errorf("CSP %q lacks %q", p.CSP, want)
		}
	}
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(p.CSP, want) {
			t.Errorf("CSP lacks %q", want)
		}
	}
}
