package proxy_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
)

// The TLS upstream audit, round 12: ballast against real loopback TLS
// servers, as users run it against https model APIs. Every server here
// presents a certificate from a CA the test makes (t12PKI); the route
// trusts it through ca_file, as a user trusts a private CA.

// t12Bound bounds how long a probe waits for what a correct build does at
// once; it never decides what a passing build asserts.
const t12Bound = 5 * time.Second

// t12PKI is a throwaway CA and the PEM file (caFile) that trusts it.
type t12PKI struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
	serial atomic.Int64
}

// t12NewPKI makes a CA and writes its certificate to a PEM file.
func t12NewPKI(t *testing.T) *t12PKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ballast test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &t12PKI{cert: cert, key: key, caFile: t.TempDir() + "/ca.pem"}
	p.serial.Store(1)
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// t12Leaf describes a server certificate: the names it is valid for and
// its validity window (zero: from an hour ago to a day on).
type t12Leaf struct {
	dns       []string
	ips       []net.IP
	notBefore time.Time
	notAfter  time.Time
}

// t12Loopback is a certificate valid for 127.0.0.1, as the test servers
// are reached.
var t12Loopback = t12Leaf{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}

// issue signs a server certificate for leaf.
func (p *t12PKI) issue(t *testing.T, leaf t12Leaf) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.notBefore.IsZero() {
		leaf.notBefore = time.Now().Add(-time.Hour)
	}
	if leaf.notAfter.IsZero() {
		leaf.notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial.Add(1)),
		Subject:      pkix.Name{CommonName: "ballast test upstream"},
		DNSNames:     leaf.dns,
		IPAddresses:  leaf.ips,
		NotBefore:    leaf.notBefore,
		NotAfter:     leaf.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// t12Server is a net/http server behind TLS that counts the TCP
// connections it accepted and the TLS handshakes it ran.
type t12Server struct {
	url        string // https://127.0.0.1:port
	addr       string
	conns      atomic.Int64
	handshakes atomic.Int64
}

// t12Serve starts h behind TLS with cert; it closes with the test (after
// ballast, which the test starts later, so its cleanup runs first).
func t12Serve(t *testing.T, cert tls.Certificate, h http.HandlerFunc) *t12Server {
	t.Helper()
	s := &t12Server{}
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s.handshakes.Add(1)
			return nil, nil
		},
	}
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected here
	ts.StartTLS()
	t.Cleanup(ts.Close)
	s.url, s.addr = ts.URL, ts.Listener.Addr().String()
	return s
}

// t12RawTLS is a raw TLS server: each connection's handshake runs with
// cert, then serve scripts the rest. It returns the listener's host:port.
func t12RawTLS(t *testing.T, cert tls.Certificate, serve func(c *tls.Conn, br *bufio.Reader)) string {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	return serveConns(t, func(c net.Conn, _ *bufio.Reader) {
		tc := tls.Server(c, cfg)
		_ = tc.SetDeadline(time.Now().Add(t12Bound))
		if tc.Handshake() != nil {
			return
		}
		_ = tc.SetDeadline(time.Time{})
		serve(tc, bufio.NewReader(tc))
	})
}

// t12Route is a config of one route "tls" on up trusting caFile (empty:
// none), with extra policy lines indented under the route.
func t12Route(up, caFile, extra string) string {
	ca := ""
	if caFile != "" {
		ca = fmt.Sprintf("    ca_file: %q\n", caFile)
	}
	return fmt.Sprintf(`
routes:
  - name: tls
    match: {path_prefix: /}
    upstream: %q
%s%s`, up, ca, extra)
}

// t12Problem decodes a problem+json answer and checks status and reason.
func t12Problem(t *testing.T, resp *http.Response, body string, status int, reason string) problemBody {
	t.Helper()
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != status || p.Reason != reason {
		t.Fatalf("got %d %s, want %d %s: %s", resp.StatusCode, p.Reason, status, reason, body)
	}
	return p
}

// t12Status reads /status.
func t12Status(t *testing.T, b *ballast) supervise.Snapshot {
	t.Helper()
	resp, body := get(t, client(t), b.admin+"/status")
	if resp.StatusCode != 200 {
		t.Fatalf("/status: %d %s", resp.StatusCode, body)
	}
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return snap
}

// t12Body is n deterministic bytes, different at every offset mod 251.
func t12Body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// The happy path over TLS: GET, POST with a body, HEAD, a chunked answer,
// a 5 MiB body each way, all on one kept-alive connection: one TCP
// connection and one handshake for the lot.
func TestTLS12HappyPathOnOneConnection(t *testing.T) {
	pki := t12NewPKI(t)
	big := t12Body(5 << 20)
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/get":
			fmt.Fprintf(w, "hello %s", r.Method)
		case "/echo":
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
			_, _ = io.Copy(w, r.Body)
		case "/head":
			w.Header().Set("Content-Length", "11")
			if r.Method != http.MethodHead {
				_, _ = io.WriteString(w, "hello there")
			}
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "piece %d;", i)
				w.(http.Flusher).Flush()
			}
		case "/big":
			_, _ = w.Write(big)
		}
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
	c := client(t)
	for i := range 10 {
		if resp, body := get(t, c, b.base+"/get"); resp.StatusCode != 200 || body != "hello GET" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if resp, body := do(t, "POST", b.base+"/echo", `{"model":"m"}`, "Content-Type", "application/json"); resp.StatusCode != 200 || body != `{"model":"m"}` {
		t.Fatalf("POST: %d %q", resp.StatusCode, body)
	}
	resp, err := c.Head(b.base + "/head")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 11 {
		t.Fatalf("HEAD: %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
	resp, body := get(t, c, b.base+"/chunked")
	if resp.StatusCode != 200 || body != "piece 0;piece 1;piece 2;" {
		t.Fatalf("chunked: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, c, b.base+"/big")
	if resp.StatusCode != 200 || sha256.Sum256([]byte(body)) != sha256.Sum256(big) {
		t.Fatalf("5 MiB download: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = do(t, "POST", b.base+"/echo", string(big), "Content-Type", "application/octet-stream")
	if resp.StatusCode != 200 || sha256.Sum256([]byte(body)) != sha256.Sum256(big) {
		t.Fatalf("5 MiB upload echoed: %d, %d bytes", resp.StatusCode, len(body))
	}
	if n, h := srv.conns.Load(), srv.handshakes.Load(); n != 1 || h != 1 {
		t.Errorf("%d connections and %d handshakes for 15 sequential requests; want the one kept alive", n, h)
	}
}

// An event stream over TLS is relayed as it arrives: the agent reads the
// first event while the upstream still holds the second back.
func TestTLS12EventStreamRelayedAsItArrives(t *testing.T) {
	pki := t12NewPKI(t)
	release := make(chan struct{})
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: second\n\ndata: [DONE]\n\n")
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    retry: {unsafe_methods: true}\n"))
	req, _ := http.NewRequest("POST", b.base+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	resp, err := client(t).Do(req)
	if err != nil {
		close(release)
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	close(release) // only once the first event is in may the upstream go on
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: second\n\ndata: [DONE]\n\n" {
		t.Fatalf("rest of the stream: %q, %v", rest, err)
	}
}

// An agent that leaves in the middle of a stream relayed from a TLS
// upstream: ballast closes the upstream connection (the upstream sees it)
// rather than reading the rest for nobody.
func TestTLS12AgentLeavingMidStreamClosesTheUpstream(t *testing.T) {
	pki := t12NewPKI(t)
	gone := make(chan struct{}, 1)
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		gone <- struct{}{}
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    timeouts: {idle: 60s, total: 120s}\n"))
	conn := dialBounded(t, b.addr, t12Bound)
	defer conn.Close()
	fmt.Fprint(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	conn.Close()
	select {
	case <-gone:
	case <-time.After(t12Bound):
		t.Fatal("the upstream's stream stayed open after the agent left")
	}
}

// t12Hang is a handler that answers nothing until the client (ballast)
// closes the connection, and counts those hang-ups.
type t12Hang struct {
	started chan struct{}
	hungUp  atomic.Int64
	hits    atomic.Int64
}

func newT12Hang() *t12Hang { return &t12Hang{started: make(chan struct{}, 16)} }

func (h *t12Hang) handler(w http.ResponseWriter, r *http.Request) {
	h.hits.Add(1)
	_, _ = io.Copy(io.Discard, r.Body) // net/http watches the connection once the body is read
	h.started <- struct{}{}
	<-r.Context().Done()
	h.hungUp.Add(1)
}

// An upstream that completes the handshake and then says nothing: the
// attempt ends at per_try, answered 504 timeout, and the upstream sees
// its connection closed.
func TestTLS12HangAfterHandshakeTimesOutAtPerTry(t *testing.T) {
	pki := t12NewPKI(t)
	h := newT12Hang()
	srv := t12Serve(t, pki.issue(t, t12Loopback), h.handler)
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    timeouts: {per_try: 300ms, total: 10s}\n    retry: {attempts: 1}\n"))
	start := time.Now()
	resp, body := get(t, client(t), b.base+"/x")
	took := time.Since(start)
	t12Problem(t, resp, body, 504, "timeout")
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("answered after %v; per_try is 300ms", took)
	}
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
}

// t12Silent is a TCP listener that accepts and never speaks (a TLS
// handshake with it hangs); it counts the connections it accepted.
func t12Silent(t *testing.T) (addr string, accepted *atomic.Int64) {
	t.Helper()
	accepted = new(atomic.Int64)
	addr = serveConns(t, func(c net.Conn, _ *bufio.Reader) {
		accepted.Add(1)
		_, _ = io.Copy(io.Discard, c) // until ballast (or the cleanup) closes it
	})
	return addr, accepted
}

// An upstream that accepts the TCP connection and never answers the
// ClientHello: the handshake is part of opening the connection, bounded by
// timeouts.connect, not by per_try; it failed before the request left, so
// it is a connect-failure, retried even for a POST, and the agent reads
// that the handshake is what timed out.
func TestTLS12HandshakeHangIsAConnectTimeout(t *testing.T) {
	addr, accepted := t12Silent(t)
	b := startBallast(t, t12Route("https://"+addr, "",
		"    timeouts: {connect: 200ms, per_try: 4s, total: 10s}\n    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}\n"))
	start := time.Now()
	resp, body := do(t, "POST", b.base+"/v1/chat/completions", `{}`, "Content-Type", "application/json")
	took := time.Since(start)
	p := t12Problem(t, resp, body, 504, "timeout")
	if took > 3*time.Second {
		t.Errorf("answered after %v: the handshakes waited for per_try (4s), not timeouts.connect (200ms)", took)
	}
	if p.Attempts != 2 {
		t.Errorf("%d attempts; a handshake that never finished sent nothing, and is retried like any connect-failure", p.Attempts)
	}
	waitFor(t, func() bool { return accepted.Load() == 2 })
	if !strings.Contains(p.Detail, "TLS handshake") {
		t.Errorf("detail %q does not say the TLS handshake timed out", p.Detail)
	}
}

// An upstream that resets the connection in the middle of its answer: a
// GET is retried on a fresh connection (a fresh handshake) and succeeds;
// a POST is not, as over plain http.
func TestTLS12ResetMidResponseIsRetried(t *testing.T) {
	pki := t12NewPKI(t)
	var n atomic.Int64
	addr := t12RawTLS(t, pki.issue(t, t12Loopback), func(c *tls.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if n.Add(1) == 1 || req.Method == "POST" {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf of it")
				_ = c.NetConn().(*net.TCPConn).SetLinger(0)
				_ = c.NetConn().Close() // a reset, no close_notify
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
		}
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile, "    retry: {backoff: {base: 1ms, max: 1ms}}\n"))
	resp, body := get(t, client(t), b.base+"/x")
	if resp.StatusCode != 200 || body != "whole" || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("%d %q after %s attempts; want the retry's answer", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
	// A POST the upstream may have run is not repeated (a reset is not a
	// connect-failure), and the detail quotes no address of ballast's.
	resp, body = do(t, "POST", b.base+"/x", "{}")
	if p := t12Problem(t, resp, body, 502, "upstream_unavailable"); p.Attempts != 1 || strings.Contains(p.Detail, "->") {
		t.Errorf("POST reset mid-answer: %+v", p)
	}
}

// An event stream the upstream breaks off (the TCP connection closes
// without TLS's close_notify) reaches the agent as an error, and is
// counted and logged as truncated, as over plain http.
func TestTLS12StreamCutIsATruncation(t *testing.T) {
	pki := t12NewPKI(t)
	addr := t12RawTLS(t, pki.issue(t, t12Loopback), func(c *tls.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		_, _ = io.WriteString(c, "f\r\ndata: partial\n\n\r\n")
		_ = c.NetConn().Close()
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile, ""))
	resp, err := client(t).Get(b.base + "/stream")
	var got []byte
	if err == nil {
		got, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatalf("the agent read a clean, complete %d answer (%q); a cut stream must be an error", resp.StatusCode, got)
	}
	if !strings.Contains(string(got), "data: partial") {
		t.Errorf("the event before the cut did not reach the agent: %q", got)
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "tls"}) == 1 })
	if !strings.Contains(b.logs.String(), "broke mid-stream") {
		t.Error("the truncation was not logged")
	}
}

// An agent that hangs up while a TLS upstream works on its call: ballast
// closes the upstream connection (the upstream sees it), logs 499, and
// retries nothing.
func TestTLS12AgentLeavingClosesTheUpstreamConnection(t *testing.T) {
	pki := t12NewPKI(t)
	h := newT12Hang()
	srv := t12Serve(t, pki.issue(t, t12Loopback), h.handler)
	b := startBallast(t, t12Route(srv.url, pki.caFile,
		"    retry: {attempts: 3, unsafe_methods: true, backoff: {base: 1ms, max: 1ms}}\n    timeouts: {per_try: 60s, total: 120s}\n"))
	sendAndLeave(t, b.addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", h.started)
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
	waitFor(t, func() bool {
		b.srv.FlushAccessLog()
		return strings.Contains(b.logs.String(), `"msg":"request"`)
	})
	if logs := b.logs.String(); !strings.Contains(logs, `"status":499`) || !strings.Contains(logs, `"stopped":"agent_gone"`) {
		t.Errorf("the trail does not say the agent left: %s", logs)
	}
	if n := h.hits.Load(); n != 1 {
		t.Errorf("upstream hits %d, want 1", n)
	}
}

// t12Bad is an upstream ballast cannot verify, the ca_file its route
// gives, and what the agent's problem detail must say.
type t12Bad struct {
	name   string
	url    string
	caFile string
	detail string
}

// t12BadUpstreams starts one upstream of each kind ballast cannot verify;
// ok counts the requests their application saw (none may reach it).
func t12BadUpstreams(t *testing.T, ok *atomic.Int64) []t12Bad {
	t.Helper()
	pki := t12NewPKI(t)
	h := func(w http.ResponseWriter, r *http.Request) { ok.Add(1); _, _ = io.WriteString(w, "ok") }
	_, plain := upstream(t, h)
	return []t12Bad{
		{"unknown authority", t12Serve(t, pki.issue(t, t12Loopback), h).url, "", "x509: certificate signed by unknown authority"},
		{"hostname mismatch", t12Serve(t, pki.issue(t, t12Leaf{dns: []string{"api.example.com"}, ips: []net.IP{net.IPv4(10, 0, 0, 1)}}), h).url,
			pki.caFile, "x509: certificate is valid for 10.0.0.1, not 127.0.0.1"},
		{"expired", t12Serve(t, pki.issue(t, t12Leaf{ips: t12Loopback.ips, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}), h).url,
			pki.caFile, "x509: certificate has expired"},
		{"plain http behind https", "https://" + plain, "", "tls: first record does not look like a TLS handshake"},
	}
}

// An upstream whose certificate ballast cannot verify (or that does not
// speak TLS) gets a 502 whose detail says what is wrong, quoting no
// certificate and no address but the upstream's as the route names it.
// The refusal is deterministic: the next handshake would present the
// same certificate, so ballast makes one attempt, spends no retry budget,
// and waits for no backoff; the breaker counts it, and /status lists the
// failure as a connect-failure.
func TestTLS12CertificateProblemsAreClearAndNotRetried(t *testing.T) {
	var ok atomic.Int64
	for _, tt := range t12BadUpstreams(t, &ok) {
		t.Run(tt.name, func(t *testing.T) {
			b := startBallast(t, t12Route(tt.url, tt.caFile,
				"    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 0.1}}\n    breaker: {failures: 3, failure_ratio: 0}\n"))
			for i := range 3 {
				resp, body := do(t, "POST", b.base+"/v1/x", `{}`, "Content-Type", "application/json")
				p := t12Problem(t, resp, body, 502, "upstream_unavailable")
				if !strings.Contains(p.Detail, tt.detail) || !strings.Contains(p.Detail, "TLS handshake") {
					t.Errorf("detail %q does not say %q", p.Detail, tt.detail)
				}
				if strings.Contains(body, "BEGIN") || strings.Contains(body, "->") {
					t.Errorf("the problem quotes key material or addresses: %s", body)
				}
				// Each request: one attempt, so the tiny retry budget (one
				// retry) is never touched and the answer is never 503
				// budget_exhausted.
				if p.Attempts != 1 {
					t.Errorf("request %d: %d attempts; a certificate refusal is the same on every handshake", i, p.Attempts)
				}
			}
			snap := t12Status(t, b)
			u := snap.Routes[0].Upstreams[0]
			if u.Breaker != "open" {
				t.Errorf("breaker %q after 3 refused handshakes (failures: 3)", u.Breaker)
			}
			if len(snap.Failures) != 3 || snap.Failures[0].Cause != "connect-failure" || snap.Failures[0].Class != "transient" {
				t.Errorf("/status failures: %+v", snap.Failures)
			}
			// Open: the next call is refused without a handshake.
			resp, body := do(t, "POST", b.base+"/v1/x", `{}`)
			t12Problem(t, resp, body, 503, "breaker_open")
		})
	}
	if ok.Load() != 0 {
		t.Errorf("the upstream applications saw %d requests", ok.Load())
	}
}

// A primary ballast cannot verify falls over to an https fallback at
// once, the fallback trusted through its own ca_file (another CA).
func TestTLS12CertificateProblemFallsOverAtOnce(t *testing.T) {
	var ok atomic.Int64
	fpki := t12NewPKI(t)
	fb := t12Serve(t, fpki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "from the fallback")
	})
	for _, tt := range t12BadUpstreams(t, &ok) {
		t.Run(tt.name, func(t *testing.T) {
			t12FallsOverAtOnce(t, tt.url, tt.caFile, fb, fpki.caFile)
		})
	}
}

// t12FallsOverAtOnce checks that a primary at url (trusted through
// caFile) whose handshake ballast refuses for good gets one attempt, and
// the fallback fb (trusted through fbCAFile), which answers "from the
// fallback", answers at once: no backoff (1s) in between.
func t12FallsOverAtOnce(t *testing.T, url, caFile string, fb *t12Server, fbCAFile string) {
	t.Helper()
	b := startBallast(t, t12Route(url, caFile, fmt.Sprintf(`    retry: {attempts: 3, backoff: {base: 1s, max: 1s}}
    fallbacks:
      - {upstream: %q, ca_file: %q}
`, fb.url, fbCAFile)))
	start := time.Now()
	resp, body := do(t, "POST", b.base+"/v1/x", `{}`)
	if resp.StatusCode != 200 || body != "from the fallback" || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("%d %q after %s attempts; want the fallback's answer after one refused handshake",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("took %v: the primary's refusal waited for a backoff (1s) before the fallback", took)
	}
}

// Retries over TLS as over plain http: a 503 is retried on the kept-alive
// connection (no second handshake); a primary that keeps failing falls
// over to an https fallback trusted by its own ca_file.
func TestTLS12RetriesAndFallbackOverTLS(t *testing.T) {
	pki, fpki := t12NewPKI(t), t12NewPKI(t)
	var hits atomic.Int64
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/down" || hits.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		_, _ = io.WriteString(w, "primary")
	})
	fb := t12Serve(t, fpki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "fallback "+r.URL.Path)
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, fmt.Sprintf(`    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    fallbacks:
      - {upstream: %q, ca_file: %q}
`, fb.url, fpki.caFile)))
	resp, body := get(t, client(t), b.base+"/x")
	if resp.StatusCode != 200 || body != "primary" || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("503 then ok: %d %q after %s attempts", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
	if h := srv.handshakes.Load(); h != 1 {
		t.Errorf("%d handshakes for an attempt and its retry; the retry reuses the kept-alive connection", h)
	}
	resp, body = get(t, client(t), b.base+"/down")
	if resp.StatusCode != 200 || body != "fallback /down" || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("primary down: %d %q after %s attempts; want the fallback's answer", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
}

// Hedging over TLS: the hedge answers, and the slow copy's TLS connection
// is closed at once (the upstream sees its client go away).
func TestTLS12HedgeOverTLS(t *testing.T) {
	pki := t12NewPKI(t)
	gone := make(chan struct{}, 1)
	var hits atomic.Int64
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			<-r.Context().Done()
			gone <- struct{}{}
			return
		}
		_, _ = io.WriteString(w, "fast")
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    hedge_after: 50ms\n    timeouts: {per_try: 60s, total: 120s}\n"))
	resp, body := get(t, client(t), b.base+"/x")
	if resp.StatusCode != 200 || body != "fast" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	select {
	case <-gone:
	case <-time.After(t12Bound):
		t.Fatal("the slow copy's connection stayed open after the hedge answered")
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "tls"}); got != 1 {
		t.Errorf("hedges counted %v", got)
	}
}

// A keyed POST over TLS runs once: its duplicate replays the answer.
func TestTLS12KeyedPostReplays(t *testing.T) {
	pki := t12NewPKI(t)
	var calls atomic.Int64
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "charged %d", calls.Add(1))
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    idempotency: {mode: header}\n"))
	for i := range 3 {
		resp, body := do(t, "POST", b.base+"/charge", `{"amount":5}`, "Idempotency-Key", "order-42")
		if resp.StatusCode != 200 || body != "charged 1" || (i > 0) != (resp.Header.Get("Idempotent-Replayed") == "true") {
			t.Fatalf("call %d: %d %q replayed %q", i, resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
		}
	}
	if calls.Load() != 1 {
		t.Errorf("the upstream ran the keyed call %d times", calls.Load())
	}
}

// A keyed POST whose TLS handshake never completed never ran: the key is
// free, and the agent's retry runs the call, rather than reading
// outcome_unknown as for a call that may have reached the upstream.
func TestTLS12KeyedPostAfterAHungHandshakeRunsOnRetry(t *testing.T) {
	pki := t12NewPKI(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.issue(t, t12Loopback)}}
	var conns, calls atomic.Int64
	addr := serveConns(t, func(c net.Conn, _ *bufio.Reader) {
		if conns.Add(1) == 1 {
			_, _ = io.Copy(io.Discard, c) // says nothing to the first ClientHello
			return
		}
		tc := tls.Server(c, cfg)
		br := bufio.NewReader(tc)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nran %03d", calls.Add(1))
		}
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile,
		"    idempotency: {mode: header}\n    retry: {attempts: 1}\n    timeouts: {connect: 200ms, per_try: 3s, total: 10s}\n"))
	resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "k-1")
	t12Problem(t, resp, body, 504, "timeout")
	resp, body = do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "k-1")
	if resp.StatusCode != 200 || body != "ran 001" {
		t.Fatalf("the retry of a call that never left: %d %s; want it run", resp.StatusCode, body)
	}
}

// Shutdown drains a call in flight on a TLS upstream: the agent gets its
// answer, and Shutdown returns once it is out.
func TestTLS12ShutdownDrainsAnInFlightCall(t *testing.T) {
	pki := t12NewPKI(t)
	started, release := make(chan struct{}, 1), make(chan struct{})
	var once atomic.Bool
	t.Cleanup(func() {
		if once.CompareAndSwap(false, true) {
			close(release)
		}
	})
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
	type answer struct {
		code int
		body string
		err  error
	}
	got := make(chan answer, 1)
	c := client(t)
	go func() {
		resp, err := c.Get(b.base + "/slow")
		if err != nil {
			got <- answer{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- answer{resp.StatusCode, string(body), err}
	}()
	select {
	case <-started:
	case <-time.After(t12Bound):
		t.Fatal("the call never reached the upstream")
	}
	done := saShutdown(b, 10*time.Second)
	waitFor(t, func() bool { // the drain has begun: ballast is no longer ready
		resp, err := http.Get(b.admin + "/readyz")
		if err != nil {
			return true
		}
		resp.Body.Close()
		return resp.StatusCode != 200
	})
	if once.CompareAndSwap(false, true) {
		close(release)
	}
	select {
	case a := <-got:
		if a.err != nil || a.code != 200 || a.body != "finished" {
			t.Errorf("the drained call: %d %q %v", a.code, a.body, a.err)
		}
	case <-time.After(t12Bound):
		t.Fatal("the drained call never got its answer")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(t12Bound):
		t.Fatal("Shutdown did not return once the call was out")
	}
}

// A ca_file that cannot be read, or holds no certificate, is a config
// error naming the key's path and the file, at load and on reload; a
// refused reload keeps the config in force, warm TLS connections and all.
func TestTLS12BadCAFileIsAConfigError(t *testing.T) {
	pki := t12NewPKI(t)
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	dir := t.TempDir()
	keyOnly := dir + "/key.pem"
	if err := os.WriteFile(keyOnly, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not a certificate")}), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := dir + "/garbage.pem"
	if err := os.WriteFile(garbage, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
	c := client(t)
	if resp, body := get(t, c, b.base+"/x"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("before the reloads: %d %q", resp.StatusCode, body)
	}
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"missing file", t12Route(srv.url, dir+"/nope.pem", ""), "routes[0].ca_file: open " + dir + "/nope.pem: no such file or directory"},
		{"a directory", t12Route(srv.url, dir, ""), "routes[0].ca_file: read " + dir + ": is a directory"},
		{"no certificate", t12Route(srv.url, keyOnly, ""), "routes[0].ca_file: " + keyOnly + " holds no PEM certificate"},
		{"a certificate block that does not parse", t12Route(srv.url, garbage, ""), "routes[0].ca_file: " + garbage + " holds no PEM certificate"},
		{"a fallback's", t12Route(srv.url, pki.caFile, fmt.Sprintf("    fallbacks: [{upstream: %q, ca_file: %q}]\n", srv.url, keyOnly)),
			"routes[0].fallbacks[0].ca_file: " + keyOnly + " holds no PEM certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := t.TempDir() + "/ballast.yaml"
			if err := os.WriteFile(file, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := config.Load(config.Source{File: file}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("load: %v; want %q", err, tt.want)
			}
			code, body := opsReload(t, b, tt.yaml)
			if code != 422 || !strings.Contains(body, tt.want) {
				t.Errorf("reload: %d %s; want 422 saying %q", code, body, tt.want)
			}
			if strings.Contains(body, "not a certificate") {
				t.Errorf("the refusal quotes the file's contents: %s", body)
			}
			if resp, body := get(t, c, b.base+"/x"); resp.StatusCode != 200 || body != "ok" {
				t.Errorf("after the refused reload: %d %q; want the config in force", resp.StatusCode, body)
			}
		})
	}
	if n := srv.handshakes.Load(); n != 1 {
		t.Errorf("%d handshakes: the refused reloads dropped the warm connection", n)
	}
}

// A kept-alive TLS connection the upstream closed while idle (its
// keep-alive timeout, shorter than ballast's) is not used for the next
// request: one attempt, on a fresh connection and handshake.
func TestTLS12StaleIdleConnectionIsSkipped(t *testing.T) {
	pki := t12NewPKI(t)
	var closed atomic.Int64
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{pki.issue(t, t12Loopback)}}
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			closed.Add(1)
		}
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	b := startBallast(t, t12Route(ts.URL, pki.caFile, "    retry: {attempts: 1}\n"))
	for i := range 2 {
		if resp, body := do(t, "POST", b.base+"/x", "{}"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		ts.CloseClientConnections() // as an upstream's idle timeout does
		waitFor(t, func() bool { return closed.Load() == int64(i+1) })
	}
	// A POST: had it gone out on the closed connection, it would not
	// have been sent again (attempts: 1, and it may have run).
	if resp, body := do(t, "POST", b.base+"/x", "{}"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the upstream closed the idle connection: %d %q", resp.StatusCode, body)
	}
}

// t12SplitConn delays the second half of each write by pause once split
// is set: a TLS record arrives in two pieces, with silence between them.
type t12SplitConn struct {
	net.Conn
	split atomic.Bool
	pause time.Duration
}

func (c *t12SplitConn) Write(p []byte) (int, error) {
	if !c.split.Load() || len(p) < 2 {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(p[:len(p)/2])
	if err != nil {
		return n, err
	}
	time.Sleep(c.pause) // the upstream's silence mid-record: part of the script, not a wait for ballast
	m, err := c.Conn.Write(p[len(p)/2:])
	return n + m, err
}

// A standing GET event stream over TLS (MCP's) stays open through
// silences longer than timeouts.idle, even one in the middle of a TLS
// record (the read deadline fires with half a record buffered), and the
// event after it arrives whole. When the agent leaves, the upstream sees
// its connection closed.
func TestTLS12StandingStreamSurvivesSilenceMidRecord(t *testing.T) {
	pki := t12NewPKI(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.issue(t, t12Loopback)}}
	gone := make(chan struct{}, 1)
	addr := serveConns(t, func(c net.Conn, _ *bufio.Reader) {
		sc := &t12SplitConn{Conn: c, pause: 350 * time.Millisecond}
		tc := tls.Server(sc, cfg)
		br := bufio.NewReader(tc)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		_, _ = io.WriteString(tc, "d\r\ndata: first\n\n\r\n")
		sc.split.Store(true)
		_, _ = io.WriteString(tc, "e\r\ndata: second\n\n\r\n")
		sc.split.Store(false)
		_, _ = br.ReadByte() // until ballast closes the connection
		gone <- struct{}{}
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile, "    timeouts: {idle: 100ms}\n"))
	resp, err := client(t).Get(b.base + "/mcp")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for _, want := range []string{"data: first\n", "\n", "data: second\n", "\n"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			resp.Body.Close()
			t.Fatalf("read %q, %v; want %q", line, err, want)
		}
	}
	resp.Body.Close() // the agent leaves
	select {
	case <-gone:
	case <-time.After(t12Bound):
		t.Fatal("the upstream's stream stayed open after the agent left")
	}
}

// A POST stream over TLS that stalls past timeouts.idle is cut and
// counted as truncated, as over plain http.
func TestTLS12StalledStreamIsCutAtIdle(t *testing.T) {
	pki := t12NewPKI(t)
	srv := t12Serve(t, pki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    timeouts: {idle: 200ms}\n"))
	resp, err := client(t).Post(b.base+"/v1/chat", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(got) != "data: one\n\n" {
		t.Fatalf("read %q, %v; want the first event, then an error", got, err)
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "tls"}) == 1 })
}

// An upstream that refuses a large upload before reading it (413, then
// closing) is heard over TLS as over plain http: the agent gets the 413.
func TestTLS12EarlyAnswerToALargeUpload(t *testing.T) {
	pki := t12NewPKI(t)
	cert := pki.issue(t, t12Loopback)
	answer := func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!")
	}
	plain := serveConns(t, answer)
	secure := t12RawTLS(t, cert, func(c *tls.Conn, br *bufio.Reader) { answer(c, br) })
	body := string(t12Body(8 << 20))
	for _, tt := range []struct{ name, up, ca string }{
		{"http", "http://" + plain, ""},
		{"https", "https://" + secure, pki.caFile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := startBallast(t, t12Route(tt.up, tt.ca, "    retry: {attempts: 1}\n"))
			resp, got := do(t, "PUT", b.base+"/upload", body)
			if resp.StatusCode != 413 || got != "too big!" {
				t.Errorf("%d %.200q; want the upstream's 413", resp.StatusCode, got)
			}
		})
	}
}

// A retry budget spent on TLS handshake failures: the 503's detail names
// the last failure as upstream_unavailable's does, without ballast's own
// address or the upstream's IP.
func TestTLS12BudgetExhaustedDetailQuotesNoAddress(t *testing.T) {
	addr, _ := t12Silent(t)
	b := startBallast(t, t12Route("https://"+addr, "",
		"    timeouts: {connect: 100ms, per_try: 2s, total: 10s}\n    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 0.1}}\n"))
	var p problemBody
	for range 3 {
		resp, body := get(t, client(t), b.base+"/x")
		if resp.StatusCode == 503 {
			p = t12Problem(t, resp, body, 503, "budget_exhausted")
			break
		}
	}
	if p.Reason == "" {
		t.Fatal("the retry budget (one retry) was never spent")
	}
	if strings.Contains(p.Detail, "->") || strings.Contains(p.Detail, "tcp 127.0.0.1") {
		t.Errorf("detail quotes the network's addresses: %q", p.Detail)
	}
	if !strings.Contains(p.Detail, "TLS handshake") {
		t.Errorf("detail %q does not name the last failure", p.Detail)
	}
}

// An upstream that completes the handshake and then reads nothing while
// ballast uploads a large body: the attempt ends at per_try, as over
// plain http. Closing the broken-off TLS connection does not first wait
// (up to five seconds) for room in the full socket to say close_notify;
// whether there is room varies, so the https upload is made three times.
func TestTLS12UploadToAnUpstreamThatDoesNotReadEndsAtPerTry(t *testing.T) {
	pki := t12NewPKI(t)
	cert := pki.issue(t, t12Loopback)
	stall := func(c net.Conn, _ *bufio.Reader) {
		_, _ = c.Read(make([]byte, 1)) // then reads nothing more: ballast's writes fill the socket
		<-t.Context().Done()
	}
	plain := serveConns(t, stall)
	secure := t12RawTLS(t, cert, func(c *tls.Conn, br *bufio.Reader) { stall(c, br) })
	body := string(t12Body(16 << 20))
	for _, tt := range []struct {
		name, up, ca string
		runs         int
	}{
		{"http", "http://" + plain, "", 1},
		{"https", "https://" + secure, pki.caFile, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := startBallast(t, t12Route(tt.up, tt.ca, "    max_body: 32MiB\n    retry: {attempts: 1}\n    timeouts: {per_try: 300ms, total: 20s}\n"))
			for i := range tt.runs {
				start := time.Now()
				resp, got := do(t, "PUT", b.base+"/upload", body)
				took := time.Since(start)
				t12Problem(t, resp, got, 504, "timeout")
				if took > 3*time.Second {
					t.Errorf("upload %d answered after %v; per_try is 300ms", i, took)
				}
			}
		})
	}
}

// An upstream that resets the connection during the TLS handshake never
// saw the request: a POST is retried (connect-failure), as after a
// refused connection, rather than answered 502 as a call that may have run.
func TestTLS12ResetDuringHandshakeIsAConnectFailure(t *testing.T) {
	pki := t12NewPKI(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.issue(t, t12Loopback)}}
	var conns, calls atomic.Int64
	addr := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		if conns.Add(1) == 1 {
			_, _ = br.ReadByte() // the ClientHello's first byte, then a reset
			_ = c.(*net.TCPConn).SetLinger(0)
			return
		}
		tc := tls.Server(c, cfg)
		tbr := bufio.NewReader(tc)
		for {
			req, err := http.ReadRequest(tbr)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			calls.Add(1)
			_, _ = io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile, "    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}\n"))
	resp, body := do(t, "POST", b.base+"/v1/x", `{}`)
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Ballast-Attempts") != "2" || calls.Load() != 1 {
		t.Fatalf("%d %q after %s attempts (%d calls); want the POST retried after the reset handshake",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"), calls.Load())
	}
}

// The classification the retry loop reads for TLS handshake errors, as
// the dial wraps them (policy.ErrTLSHandshake beside the cause).
func TestTLS12HandshakeErrorClasses(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("%w: %w", policy.ErrTLSHandshake, err) }
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tt := range []struct {
		name          string
		err           error
		class         policy.Class
		cause         policy.Cause
		deterministic bool
	}{
		{"timeout", wrap(timeout), policy.Timeout, policy.CauseConnect, false},
		{"reset", wrap(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), policy.Transient, policy.CauseConnect, false},
		{"eof", wrap(io.EOF), policy.Transient, policy.CauseConnect, false},
		{"alert", wrap(&net.OpError{Op: "remote error", Err: tls.AlertError(40)}), policy.Transient, policy.CauseConnect, false},
		{"unknown authority", wrap(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), policy.Transient, policy.CauseConnect, true},
		{"hostname", wrap(&tls.CertificateVerificationError{Err: x509.HostnameError{Host: "h"}}), policy.Transient, policy.CauseConnect, true},
		{"expired", wrap(&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}), policy.Transient, policy.CauseConnect, true},
		{"not tls", wrap(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), policy.Transient, policy.CauseConnect, true},
		{"a reset after the handshake", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, policy.Transient, policy.CauseReset, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			class, cause := policy.ClassifyError(tt.err)
			if class != tt.class || cause != tt.cause || policy.Deterministic(tt.err) != tt.deterministic {
				t.Errorf("%v: %s %s deterministic %v; want %s %s %v", tt.err, class, cause, policy.Deterministic(tt.err), tt.class, tt.cause, tt.deterministic)
			}
		})
	}
}

// A TLS call still running when the drain runs out is called off: the
// agent reads 503 shutting_down, and the upstream sees its connection
// closed, as over plain http.
func TestTLS12ShutdownCallsOffACallPastTheDrain(t *testing.T) {
	pki := t12NewPKI(t)
	h := newT12Hang()
	srv := t12Serve(t, pki.issue(t, t12Loopback), h.handler)
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    timeouts: {per_try: 60s, total: 120s}\n"))
	type answer struct {
		resp *http.Response
		body string
	}
	got := make(chan answer, 1)
	c := client(t)
	go func() {
		resp, err := c.Get(b.base + "/slow")
		if err != nil {
			got <- answer{}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- answer{resp, string(body)}
	}()
	select {
	case <-h.started:
	case <-time.After(t12Bound):
		t.Fatal("the call never reached the upstream")
	}
	start := time.Now()
	done := saShutdown(b, 300*time.Millisecond)
	select {
	case a := <-got:
		if a.resp == nil {
			t.Fatal("the agent got no answer")
		}
		t12Problem(t, a.resp, a.body, 503, "shutting_down")
	case <-time.After(t12Bound):
		t.Fatal("the call outlived the drain")
	}
	<-done
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Shutdown took %v with a drain of 300ms", took)
	}
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
}

// An answer framed by the connection's close (no Content-Length, no
// chunking) over TLS: ballast relays it whole, whether the upstream ends
// the TLS session with close_notify or only closes the TCP connection.
func TestTLS12BodyEndedByCloseIsRelayed(t *testing.T) {
	pki := t12NewPKI(t)
	addr := t12RawTLS(t, pki.issue(t, t12Loopback), func(c *tls.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, until the end")
		if req.URL.Path == "/notify" {
			_ = c.Close() // close_notify, then the TCP close
			return
		}
		_ = c.NetConn().Close()
	})
	b := startBallast(t, t12Route("https://"+addr, pki.caFile, ""))
	for _, path := range []string{"/notify", "/bare"} {
		if resp, body := get(t, client(t), b.base+path); resp.StatusCode != 200 || body != "hello, until the end" {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
}
