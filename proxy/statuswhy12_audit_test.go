package proxy_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/ballast-proxy/ballast/validate"
)

// The why of /status, round 12: when an upstream fails, /status and the
// status page say why in words an operator can act on (an upstream's
// last_failure, a failure's detail), worded as the agent's problem detail
// is, and never with a network address, a header value, a key or a body.

// why12Secrets are strings that must never reach /status or the page: the
// agent's credential, the route's configured keys (one from the
// environment, one literal), and what the failing upstream answered.
var why12Secrets = []string{"sk-agent-WHY12AGENTSECRET", "WHY12ENVKEYSECRET", "WHY12LITERALKEYSECRET",
	"WHY12BODYSECRET", "WHY12COOKIESECRET"}

// why12SelfSigned is a certificate for localhost and 127.0.0.1 that signs
// itself: no CA ballast trusts vouches for it.
func why12SelfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(12),
		Subject:      pkix.Name{CommonName: "why12 self-signed"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// why12Port is the port of a loopback host:port.
func why12Port(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// why12Upstreams are the failing upstreams, each named by localhost (so
// that any 127.0.0.1 or ::1 on /status is an address ballast let through):
// a port nothing listens on, an https server whose certificate signs
// itself, an upstream answering 503 with a secret in its body and
// cookie, and one whose status line is garbage quoting a secret.
type why12Upstreams struct {
	refused, untrusted, unavailable, garbled string // host:port, as /status names them
}

func why12Start(t *testing.T) (*ballast, why12Upstreams) {
	t.Helper()
	refusedPort := why12Port(t, deadAddr(t))

	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the self-signed upstream's application was reached")
	}))
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{why12SelfSigned(t)}}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	ts.StartTLS()
	t.Cleanup(ts.Close)

	_, unavailable := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", "session=WHY12COOKIESECRET")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":"down for WHY12BODYSECRET"}`)
	})
	garbled := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 2x0 <b>WHY12COOKIESECRET</b>\r\nSet-Cookie: s=WHY12COOKIESECRET\r\nContent-Length: 0\r\n\r\n")
	})

	ups := why12Upstreams{
		refused:     "localhost:" + refusedPort,
		untrusted:   "localhost:" + why12Port(t, ts.Listener.Addr().String()),
		unavailable: "localhost:" + why12Port(t, unavailable),
		garbled:     "localhost:" + why12Port(t, garbled),
	}
	route := func(name, url string) string {
		return fmt.Sprintf(`
  - name: %s
    match: {path_prefix: /%s/}
    upstream: %q
    retry: {attempts: 1}
    headers: {set: {X-Api-Key: "${WHY12_KEY}", X-Other-Key: "WHY12LITERALKEYSECRET"}}`, name, name, url)
	}
	b := startBallast(t, "routes:"+route("refused", "http://"+ups.refused)+route("untrusted", "https://"+ups.untrusted)+
		route("unavailable", "http://"+ups.unavailable)+route("garbled", "http://"+ups.garbled)+"\n",
		"WHY12_KEY=WHY12ENVKEYSECRET")
	for _, name := range []string{"refused", "untrusted", "unavailable", "garbled"} {
		resp, body := do(t, "POST", b.base+"/"+name+"/v1/chat", `{"prompt":"WHY12BODYSECRET"}`,
			"Authorization", "Bearer sk-agent-WHY12AGENTSECRET", "X-Request-Id", "why12-"+name, "Content-Type", "application/json")
		if resp.StatusCode < 500 {
			t.Fatalf("%s: %d %s, want a failure", name, resp.StatusCode, body)
		}
	}
	return b, ups
}

// why12NoLeak fails the test when text (a /status body, a rendered page)
// holds a network address or a secret.
func why12NoLeak(t *testing.T, what, text string) {
	t.Helper()
	for _, bad := range append([]string{"127.0.0.1", "::1"}, why12Secrets...) {
		if i := strings.Index(text, bad); i >= 0 {
			t.Errorf("%s holds %q: ...%s...", what, bad, text[max(0, i-120):min(len(text), i+60)])
		}
	}
}

// Each failing upstream's row on /status says why it last failed, in the
// words of the agent's problem detail: the refused port, the certificate
// ballast cannot verify, the 503, the garbled answer (without its
// bytes). The failure list gives the same words as detail for the
// failures that had no answer. Nothing on /status is an address or a
// secret.
func TestStatusWhy12NamesEachUpstreamsReason(t *testing.T) {
	b, ups := why12Start(t)
	_, body := statusJSON(t, b)
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	last := map[string]*supervise.LastFailure{}
	for _, r := range snap.Routes {
		for _, u := range r.Upstreams {
			last[u.Name] = u.LastFailure
		}
	}
	tests := []struct {
		name, upstream string
		class, cause   string
		status         int
		reason         *regexp.Regexp
		detail         bool // the failure list words it too
	}{
		{"refused port", ups.refused, "transient", "connect-failure", 0,
			regexp.MustCompile(`^dial tcp[46]?: connect: connection refused$`), true},
		{"unknown authority", ups.untrusted, "transient", "connect-failure", 0,
			regexp.MustCompile(`x509: certificate signed by unknown authority`), true},
		{"503", ups.unavailable, "transient", "status", 503,
			regexp.MustCompile(`^the upstream answered 503 Service Unavailable$`), false},
		{"garbled status line", ups.garbled, "transient", "", 0,
			regexp.MustCompile(`^[^"<>]*invalid response status code[^"<>]*$`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lf := last[tt.upstream]
			if lf == nil {
				t.Fatalf("/status has no last_failure for %s:\n%s", tt.upstream, body)
			}
			if lf.Class != tt.class || (tt.cause != "" && lf.Cause != tt.cause) || lf.Status != tt.status {
				t.Errorf("last_failure %+v, want class %s cause %s status %d", lf, tt.class, tt.cause, tt.status)
			}
			if !tt.reason.MatchString(lf.Reason) {
				t.Errorf("last_failure.reason %q, want %s", lf.Reason, tt.reason)
			}
			if since := snap.Time.Sub(lf.Time); since < 0 || since > time.Minute {
				t.Errorf("last_failure.time %v, %v before the snapshot", lf.Time, since)
			}
			if lf.ShortOf != "" || lf.Hint != "" {
				t.Errorf("an upstream's failure is worded as ballast's shortage: %+v", lf)
			}
			var f *supervise.Failure
			for i := range snap.Failures {
				if snap.Failures[i].Upstream == tt.upstream {
					f = &snap.Failures[i]
				}
			}
			switch {
			case f == nil:
				t.Errorf("no failure listed for %s", tt.upstream)
			case tt.detail && f.Detail != lf.Reason:
				t.Errorf("the failure's detail %q, want the upstream's reason %q", f.Detail, lf.Reason)
			case !tt.detail && f.Detail != "":
				t.Errorf("the failure's detail %q, want none: the upstream's own answer says why", f.Detail)
			}
		})
	}
	why12NoLeak(t, "/status", body)
	if t.Failed() {
		t.Logf("/status:\n%s", body)
	}
}

// The status page shows each upstream's last failure, and each failure's
// detail, as text, in a real browser: the reasons /status words, with
// none of the garbled answer's markup rendered, and no address or secret
// anywhere in the page.
func TestStatusWhy12PageShowsTheReasonsAsText(t *testing.T) {
	bin := chromium(t)
	b, ups := why12Start(t)
	dom := runChromium(t, bin, "--dump-dom", b.admin+"/")
	row := func(up string) string {
		return `data-upstream="` + regexp.QuoteMeta(up) + `">.*?</tr><tr class="last-failure"><td colspan="8">` +
			`<span class="lf-label">last failure [0-9:]+ · `
	}
	for _, c := range []struct{ name, re string }{
		{"the page rendered /status", `id="state" class="state state-live"`},
		{"the refused upstream's reason", row(ups.refused) + `transient / connect-failure</span>` +
			`<span class="lf-reason">dial tcp[46]?: connect: connection refused</span>`},
		{"the untrusted upstream's reason", row(ups.untrusted) + `transient / connect-failure</span>` +
			`<span class="lf-reason">[^<]*x509: certificate signed by unknown authority[^<]*</span>`},
		{"the unavailable upstream's reason", row(ups.unavailable) + `transient / status · 503</span>` +
			`<span class="lf-reason">the upstream answered 503 Service Unavailable</span>`},
		{"the garbled upstream's reason, without its bytes", row(ups.garbled) + `[^<]*</span><span class="lf-reason">[^<"]*invalid response status code[^<"]*</span>`},
		{"a failure's detail", `<td class="rid">why12-refused</td>`},
		{"the refused failure's detail", `<td>transient / connect-failure</td><td class="detail">dial tcp[46]?: connect: connection refused</td><td>1</td><td class="rid">why12-refused</td>`},
		{"the 503 failure, no detail", `<td>transient / status</td><td class="detail"></td><td>1</td><td class="rid">why12-unavailable</td>`},
	} {
		if !regexp.MustCompile(c.re).MatchString(dom) {
			t.Errorf("the rendered page lacks %s (%s)", c.name, c.re)
		}
	}
	if strings.Contains(dom, "<b>") {
		t.Error("the garbled answer's markup rendered on the page")
	}
	why12NoLeak(t, "the rendered page", dom)
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", dom)
	}
}

// why12Op is a dial error as the network stack returns it: with the
// upstream's resolved address and ballast's own.
func why12Op(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp4", Err: err,
		Source: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 40123}, Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 443}}
}

// why12TimeoutErr is a net.Error that timed out.
type why12TimeoutErr struct{}

func (why12TimeoutErr) Error() string   { return "i/o timeout" }
func (why12TimeoutErr) Timeout() bool   { return true }
func (why12TimeoutErr) Temporary() bool { return true }

// DescribeFault words every kind of failure as the agent's problem
// detail does, for an operator: what to act on, and no address, quoted
// byte, validation detail (it quotes the body) or secret.
func TestStatusWhy12DescribeFault(t *testing.T) {
	emfile := why12Op("dial", &net.OpError{Op: "socket", Err: syscall.EMFILE})
	tests := []struct {
		name string
		f    supervise.Fault
		want string
	}{
		{"refused, addresses dropped", supervise.Fault{Class: policy.Transient, Cause: policy.CauseConnect,
			Err: why12Op("dial", &net.OpError{Op: "connect", Err: syscall.ECONNREFUSED})},
			"dial tcp4: connect: connection refused"},
		{"no such host, resolver dropped", supervise.Fault{Class: policy.Transient, Cause: policy.CauseConnect,
			Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "api.example.com", Server: "10.0.0.53:53", IsNotFound: true}}},
			"dial tcp: lookup api.example.com: no such host"},
		{"a resolver's socket shortage, its address masked", supervise.Fault{Class: policy.RateLimited,
			Err:   &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "dial udp [::1]:53: socket: too many open files", Name: "api.example.com", Server: "[::1]:53"}},
			Short: policy.ShortageDescriptors},
			"ballast is out of file descriptors (its open-file limit) and could not open a connection to the upstream; nothing was sent (dial tcp: lookup api.example.com: dial udp [address]: socket: too many open files)"},
		{"out of descriptors", supervise.Fault{Class: policy.RateLimited, Err: emfile, Short: policy.ShortageOf(emfile)},
			"ballast is out of file descriptors (its open-file limit) and could not open a connection to the upstream; nothing was sent (dial tcp4: socket: too many open files)"},
		{"TLS handshake timed out", supervise.Fault{Class: policy.Timeout, Cause: policy.CauseConnect,
			Err: fmt.Errorf("%w: %w", policy.ErrTLSHandshake, why12TimeoutErr{})},
			"did not complete the TLS handshake in time (timeouts.connect, within the attempt's per_try)"},
		{"read timed out", supervise.Fault{Class: policy.Timeout, Cause: policy.CauseTimeout, Err: why12Op("read", why12TimeoutErr{})},
			"did not answer within the deadline"},
		{"an address outside an OpError", supervise.Fault{Class: policy.Transient, Cause: policy.CauseReset,
			Err: errors.New("proxy: 10.1.2.3:443 and [2001:db8::1]:8443 and fe80::1 went away; x509: ok 1.2")},
			"proxy: [address] and [address] and [address] went away; x509: ok 1.2"},
		{"quoted bytes masked", supervise.Fault{Class: policy.Transient, Cause: policy.CauseReset,
			Err: errors.New(`invalid header value "Bearer sk-\"x\" WHY12" in "HTTP/1.1`)},
			`invalid header value "…" in "…"`},
		{"a buffer's contents cut", supervise.Fault{Class: policy.Transient, Cause: policy.CauseReset,
			Err: errors.New("error when reading response headers: cannot find whitespace: buffer size=44, contents: Set-Cookie: s=WHY12")},
			"error when reading response headers: cannot find whitespace"},
		{"a validation failure by its check", supervise.Fault{Class: policy.Invalid, Cause: policy.CauseInvalid, Status: 200,
			Err: &validate.Failure{Check: "schema", Detail: "/token: got WHY12BODYSECRET"}},
			"the answer failed validation (schema)"},
		{"a key refused in a 200", supervise.Fault{Class: policy.Auth, Cause: policy.CauseInvalid, Status: 200,
			Err: &validate.Failure{Check: "body", Detail: "invalid_api_key WHY12", Denial: validate.DenialAuth}},
			"the upstream refused the credentials (an error in a 200 answer)"},
		{"401", supervise.Fault{Class: policy.Auth, Cause: policy.CauseStatus, Status: 401},
			"the upstream refused the credentials: 401 Unauthorized"},
		{"quota", supervise.Fault{Class: policy.Quota, Cause: policy.CauseStatus, Status: 429},
			"the upstream's quota or balance is spent: 429 Too Many Requests"},
		{"429", supervise.Fault{Class: policy.RateLimited, Cause: policy.CauseStatus, Status: 429},
			"the upstream is limiting the rate: 429 Too Many Requests"},
		{"an unknown status", supervise.Fault{Class: policy.Transient, Cause: policy.CauseStatus, Status: 599},
			"the upstream answered 599"},
		{"nothing to say", supervise.Fault{Class: policy.Transient}, ""},
		{"a long text cut", supervise.Fault{Class: policy.Transient, Err: errors.New(strings.Repeat("é", 200))},
			strings.Repeat("é", 120) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proxy.DescribeFault(&tt.f)
			if got != tt.want {
				t.Errorf("DescribeFault = %q\nwant            %q", got, tt.want)
			}
			if strings.Contains(got, "WHY12") {
				t.Errorf("a secret got through: %q", got)
			}
		})
	}
}

// Wording happens when /status is read: the request path keeps the error
// value, so a /status read long after the failure still words it, and a
// success after it leaves the last failure on show (with its time).
func TestStatusWhy12SuccessKeepsTheLastFailure(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fail") != "" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
`, up))
	if resp, _ := do(t, "GET", b.base+"/x?fail=1", ""); resp.StatusCode != 502 {
		t.Fatalf("the failing call: %d", resp.StatusCode)
	}
	first := why12Last(t, b)
	for range 3 {
		if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
			t.Fatalf("a good call: %d", resp.StatusCode)
		}
	}
	after := why12Last(t, b)
	if after == nil || first == nil || *after != *first || after.Reason != "the upstream answered 502 Bad Gateway" {
		t.Errorf("last_failure before the successes %+v, after %+v", first, after)
	}
}

// why12Last is the only upstream's last_failure on /status.
func why12Last(t *testing.T, b *ballast) *supervise.LastFailure {
	t.Helper()
	_, body := statusJSON(t, b)
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Routes) != 1 || len(snap.Routes[0].Upstreams) != 1 {
		t.Fatalf("/status: %s", body)
	}
	return snap.Routes[0].Upstreams[0].LastFailure
}
