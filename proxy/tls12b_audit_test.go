package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// The TLS upstream audit, round 12, second part: session resumption,
// the allocation gate over https, and handshakes refused over their
// parameters (alerts). Helpers of the first part (tls12_audit_test.go):
// t12NewPKI, t12Serve, t12Route, t12Problem.

// t12bServer is an httptest TLS server that tells full handshakes from
// resumed ones, and counts the TCP connections it accepted and closed.
type t12bServer struct {
	ts      *httptest.Server
	url     string
	full    atomic.Int64
	resumed atomic.Int64
	conns   atomic.Int64
	closed  atomic.Int64
}

// t12bServe starts h behind TLS (cert from pki), speaking at most
// maxVersion; tune, if any, changes the TLS config before it starts.
func t12bServe(t *testing.T, pki *t12PKI, maxVersion uint16, h http.HandlerFunc, tune ...func(*tls.Config)) *t12bServer {
	t.Helper()
	s := &t12bServer{}
	s.ts = httptest.NewUnstartedServer(h)
	s.ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{pki.issue(t, t12Loopback)},
		MaxVersion:   maxVersion,
		// Called at the end of every handshake, resumed ones included.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.DidResume {
				s.resumed.Add(1)
			} else {
				s.full.Add(1)
			}
			return nil
		},
	}
	for _, f := range tune {
		f(s.ts.TLS)
	}
	s.ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.conns.Add(1)
		case http.StateClosed:
			s.closed.Add(1)
		}
	}
	s.ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.ts.StartTLS()
	t.Cleanup(s.ts.Close)
	s.url = s.ts.URL
	return s
}

// dropIdle closes the server's connections (idle between requests), as
// an upstream's idle timeout does, and waits until they are closed.
func (s *t12bServer) dropIdle(t *testing.T) {
	t.Helper()
	want := s.conns.Load()
	s.ts.CloseClientConnections()
	waitFor(t, func() bool { return s.closed.Load() == want })
}

func (s *t12bServer) handshakes() (full, resumed int64) { return s.full.Load(), s.resumed.Load() }

var t12bVersions = []struct {
	name string
	max  uint16
}{
	{"TLS 1.3", tls.VersionTLS13},
	{"TLS 1.2", tls.VersionTLS12},
}

// t12bGet GETs url through c and wants 200 and body.
func t12bGet(t *testing.T, c *http.Client, url, body string) {
	t.Helper()
	if resp, got := get(t, c, url); resp.StatusCode != 200 || got != body {
		t.Fatalf("GET %s: %d %q; want 200 %q", url, resp.StatusCode, got, body)
	}
}

// A new connection to an upstream ballast already spoke TLS with resumes
// the session instead of a full handshake: after the upstream closed the
// idle connection (its keep-alive timeout), and after an answer with
// Connection: close. Over TLS 1.3 (a PSK from a session ticket) and
// TLS 1.2 (a session ticket) alike.
func TestTLS12bReconnectsResumeTheSession(t *testing.T) {
	for _, v := range t12bVersions {
		t.Run(v.name, func(t *testing.T) {
			pki := t12NewPKI(t)
			srv := t12bServe(t, pki, v.max, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/close" {
					w.Header().Set("Connection", "close")
				}
				_, _ = io.WriteString(w, "ok")
			})
			b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
			c := client(t)
			t12bGet(t, c, b.base+"/x", "ok")
			for range 3 {
				srv.dropIdle(t)
				t12bGet(t, c, b.base+"/x", "ok")
			}
			for range 3 {
				t12bGet(t, c, b.base+"/close", "ok")
			}
			t12bGet(t, c, b.base+"/x", "ok")
			if full, resumed := srv.handshakes(); full != 1 || resumed != 6 || srv.conns.Load() != 7 {
				t.Errorf("%d connections: %d full handshakes, %d resumed; want 7: the first full, the 6 reconnections resumed",
					srv.conns.Load(), full, resumed)
			}
		})
	}
}

// Connections opened side by side, while the first is busy, all resume
// the session the first one left (a ticket is offered to every new
// connection, not spent by one).
func TestTLS12bConcurrentConnectionsResume(t *testing.T) {
	const n = 4
	for _, v := range t12bVersions {
		t.Run(v.name, func(t *testing.T) {
			pki := t12NewPKI(t)
			arrived := make(chan struct{}, n)
			release := make(chan struct{})
			var once sync.Once
			free := func() { once.Do(func() { close(release) }) }
			t.Cleanup(free)
			srv := t12bServe(t, pki, v.max, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/held" {
					arrived <- struct{}{}
					<-release
				}
				_, _ = io.WriteString(w, "ok")
			})
			b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
			c := client(t)
			t12bGet(t, c, b.base+"/warm", "ok")
			var wg sync.WaitGroup
			errs := make(chan string, n)
			for range n {
				wg.Go(func() {
					resp, err := c.Get(b.base + "/held")
					if err != nil {
						errs <- err.Error()
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(body) != "ok" {
						errs <- fmt.Sprintf("%d %q", resp.StatusCode, body)
					}
				})
			}
			for range n { // all n are in: n connections, one of them the warm one
				select {
				case <-arrived:
				case <-time.After(t12Bound):
					free()
					t.Fatal("the concurrent calls never all reached the upstream")
				}
			}
			free()
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
			if full, resumed := srv.handshakes(); full != 1 || resumed != n-1 || srv.conns.Load() != n {
				t.Errorf("%d connections: %d full handshakes, %d resumed; want %d: one full, the %d opened side by side resumed",
					srv.conns.Load(), full, resumed, n, n-1)
			}
		})
	}
}

// A reload that keeps an upstream keeps its pool (the warm connection)
// and its sessions (a reconnection resumes); one that changes the
// route's ca_file makes a new upstream, which resumes nothing of the old
// one's: its first connection is a full handshake, verified against the
// new bundle.
func TestTLS12bReloadKeepsSessionsUnlessTheCAFileChanges(t *testing.T) {
	pki := t12NewPKI(t)
	srv := t12bServe(t, pki, tls.VersionTLS13, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, ""))
	c := client(t)
	t12bGet(t, c, b.base+"/x", "ok")
	reload := func(yaml string) {
		t.Helper()
		if code, body := opsReload(t, b, yaml); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
	}
	reload(t12Route(srv.url, pki.caFile, "    headers: {set: {X-Reloaded: one}}\n"))
	t12bGet(t, c, b.base+"/x", "ok")
	if n := srv.conns.Load(); n != 1 {
		t.Fatalf("%d connections: the reload that kept the upstream dropped its pool", n)
	}
	srv.dropIdle(t)
	t12bGet(t, c, b.base+"/x", "ok")
	if full, resumed := srv.handshakes(); full != 1 || resumed != 1 {
		t.Fatalf("%d full handshakes, %d resumed; want the reconnection after the reload resumed", full, resumed)
	}
	// The same CA under another path: the upstream's key changes.
	pem, err := os.ReadFile(pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	moved := t.TempDir() + "/moved.pem"
	if err := os.WriteFile(moved, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	reload(t12Route(srv.url, moved, "    headers: {set: {X-Reloaded: two}}\n"))
	t12bGet(t, c, b.base+"/x", "ok")
	if full, resumed := srv.handshakes(); full != 2 || resumed != 1 {
		t.Fatalf("%d full handshakes, %d resumed; want a full handshake for the new ca_file", full, resumed)
	}
	srv.dropIdle(t)
	t12bGet(t, c, b.base+"/x", "ok")
	if full, resumed := srv.handshakes(); full != 2 || resumed != 2 {
		t.Errorf("%d full handshakes, %d resumed; want the new upstream's reconnection resumed", full, resumed)
	}
}

// Two routes on the same upstream host trusting it through different
// ca_file paths are two upstreams, each with its own sessions: a session
// one verified is never offered by the other.
func TestTLS12bUpstreamsShareNoSessions(t *testing.T) {
	pki := t12NewPKI(t)
	srv := t12bServe(t, pki, tls.VersionTLS13, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "ok")
	})
	pem, err := os.ReadFile(pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir() + "/other.pem"
	if err := os.WriteFile(other, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: a, match: {path_prefix: /a}, upstream: %q, ca_file: %q}
  - {name: b, match: {path_prefix: /b}, upstream: %q, ca_file: %q}
`, srv.url, pki.caFile, srv.url, other))
	c := client(t)
	for _, path := range []string{"/a", "/b", "/a", "/b"} {
		t12bGet(t, c, b.base+path, "ok")
	}
	if full, resumed := srv.handshakes(); full != 2 || resumed != 2 {
		t.Errorf("%d full handshakes, %d resumed; want one full handshake per upstream, then each resumed its own", full, resumed)
	}
}

// raceEnabled reports whether the test binary runs under the race
// detector, which allocates on its own: the allocation gates skip then
// (as alloc_test.go's are built without it).
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// fastTLSUpstream is fastUpstream behind TLS, presenting cert.
func fastTLSUpstream(tb testing.TB, cert tls.Certificate) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBody(jsonAnswer)
	}}
	go func() { _ = s.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})) }()
	tb.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}

// TestPassThroughAllocationsOverHTTPS is the allocation gate of
// TestPassThroughAllocations with an https upstream, on a warm
// kept-alive TLS connection. It is not zero, and cannot be while
// crypto/tls reads as it does: each TLS record a connection reads
// allocates once (16 B: Conn.readFromUntil hands bytes.Buffer.ReadFrom
// an &atLeastReader, which escapes through the io.Reader interface).
// Measured with go test -memprofile (-memprofilerate 1), per request: one
// in ballast's TLS client, reading the upstream's answer (one record),
// and one in the test's upstream, a fasthttp server behind crypto/tls,
// reading the request; nothing else, in ballast, fasthttp or crypto/tls
// (whose record buffers stay with the connection). A POST adds
// fasthttp's one of the plain gate (requestStream.discard). The gate
// holds those counts exactly: above is a regression; below, crypto/tls
// got cheaper, and the counts here come down with it.
func TestPassThroughAllocationsOverHTTPS(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector allocates; the gate runs without it")
	}
	const tlsReads = 2 // records read per request: ballast's one, the upstream's one
	// gatedChains, which alloc_test.go holds, is built without -race only.
	for _, chain := range []struct{ name, extra string }{{"defaults", ""}, {"full chain", fullChain}} {
		for _, req := range []struct {
			method, body string
			want         float64
		}{
			{method: "GET", want: tlsReads},
			{method: "POST", body: `{"model":"bench-1","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`, want: tlsReads + 1},
		} {
			t.Run(chain.name+"/"+req.method, func(t *testing.T) {
				pki := t12NewPKI(t)
				up := fastTLSUpstream(t, pki.issue(t, t12Loopback))
				bl := startBallastWith(t, nil, io.Discard, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /v1/}
    upstream: https://%s
    ca_file: %q
    headers: {set: {X-Tenant: bench}}
%s`, up, pki.caFile, chain.extra))
				p := newPassThrough(t, bl.addr, "/v1/chat/completions")
				if req.body != "" {
					p.req.Header.SetMethod(req.method)
					p.req.Header.SetContentType("application/json")
					p.req.SetBodyString(req.body)
				}
				for range 100 { // warm the pools
					p.do(t)
				}
				switch allocs := testing.AllocsPerRun(1000, func() { p.do(t) }); {
				case allocs > req.want:
					t.Errorf("a pass-through %s over https allocates %.2f times; want %.0f (crypto/tls's, one per record read)", req.method, allocs, req.want)
				case allocs < req.want:
					t.Errorf("a pass-through %s over https allocates %.2f times, fewer than the %.0f crypto/tls did: lower the gate", req.method, allocs, req.want)
				}
			})
		}
	}
}

// t12bReadHello reads the ClientHello's record off c.
func t12bReadHello(c net.Conn, br *bufio.Reader) bool {
	var hdr [5]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || hdr[0] != 22 {
		return false
	}
	_, err := io.CopyN(io.Discard, br, int64(hdr[3])<<8|int64(hdr[4]))
	return err == nil
}

// t12bAlertServer answers every ClientHello with a fatal alert in the
// clear, in two writes (the record cut inside its header), and counts
// the handshakes it refused.
func t12bAlertServer(t *testing.T, code byte, refused *atomic.Int64) string {
	return serveConns(t, func(c net.Conn, br *bufio.Reader) {
		if !t12bReadHello(c, br) {
			return
		}
		refused.Add(1)
		_, _ = c.Write([]byte{21, 3, 3})
		_, _ = c.Write([]byte{0, 2, 2, code})
		_, _ = io.Copy(io.Discard, br) // until ballast closes
	})
}

// t12bTLS11Server answers every ClientHello as a server that speaks
// only TLS 1.1 does: with a ServerHello for TLS 1.1, which ballast's TLS
// client refuses (sending protocol_version). It counts the refused
// handshakes, and the alerts ballast sent.
func t12bTLS11Server(t *testing.T, refused, alerts *atomic.Int64) string {
	hello := []byte{2, 0, 0, 38, 3, 2} // ServerHello, 38 bytes, TLS 1.1
	hello = append(hello, make([]byte, 32)...)
	hello = append(hello, 0, 0xc0, 0x09, 0) // no session id, ECDHE_ECDSA_WITH_AES_128_CBC_SHA, no compression
	record := append([]byte{22, 3, 2, 0, byte(len(hello))}, hello...)
	return serveConns(t, func(c net.Conn, br *bufio.Reader) {
		if !t12bReadHello(c, br) {
			return
		}
		refused.Add(1)
		_, _ = c.Write(record)
		var alert [7]byte
		if _, err := io.ReadFull(br, alert[:]); err == nil && alert[0] == 21 && alert[5] == 2 && alert[6] == 70 {
			alerts.Add(1)
		}
		_, _ = io.Copy(io.Discard, br)
	})
}

// t12bRefusing is an upstream that refuses every handshake over its
// parameters, and what the agent's problem detail must say.
type t12bRefusing struct {
	name, url, caFile string
	detail            string
	refused           func() int64
}

// t12bRefusingUpstreams starts one upstream of each kind whose refusal
// is deterministic (policy.Deterministic).
func t12bRefusingUpstreams(t *testing.T, tls11Alerts *atomic.Int64) []t12bRefusing {
	pki := t12NewPKI(t)
	var goRefused, rawRefused, insecRefused atomic.Int64
	old := t12bServe(t, pki, tls.VersionTLS11, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "reached")
	}, func(c *tls.Config) {
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			goRefused.Add(1)
			return nil, nil
		}
	})
	version := "TLS alert protocol_version from %s: the upstream and ballast share no TLS version (ballast requires TLS 1.2 or later)"
	return []t12bRefusing{
		{"a TLS 1.1 server that says protocol_version", old.url, pki.caFile,
			fmt.Sprintf(version, "the upstream"), goRefused.Load},
		{"a TLS 1.1 server that answers in TLS 1.1", "https://" + t12bTLS11Server(t, &rawRefused, tls11Alerts), "",
			fmt.Sprintf(version, "ballast") + ": tls: server selected unsupported protocol version 302", rawRefused.Load},
		{"insufficient_security", "https://" + t12bAlertServer(t, 71, &insecRefused), "",
			"TLS alert insufficient_security from the upstream: the upstream requires cipher suites ballast does not offer", insecRefused.Load},
	}
}

// An upstream that refuses the handshake over its parameters (no TLS
// version in common, whoever says so, or insufficient_security) refuses
// every handshake alike: one attempt, no backoff, no retry budget spent,
// a 502 whose detail says what is wrong; the breaker counts it.
func TestTLS12bVersionRefusalsAreClearAndNotRetried(t *testing.T) {
	var tls11Alerts atomic.Int64
	for _, tt := range t12bRefusingUpstreams(t, &tls11Alerts) {
		t.Run(tt.name, func(t *testing.T) {
			b := startBallast(t, t12Route(tt.url, tt.caFile,
				"    retry: {attempts: 3, backoff: {base: 1s, max: 1s}, budget: {ratio: 0, min_per_second: 0.1}}\n    breaker: {failures: 3, failure_ratio: 0}\n"))
			for i := range 3 {
				start := time.Now()
				resp, body := do(t, "POST", b.base+"/v1/x", `{}`, "Content-Type", "application/json")
				took := time.Since(start)
				p := t12Problem(t, resp, body, 502, "upstream_unavailable")
				if !strings.Contains(p.Detail, tt.detail) || !strings.Contains(p.Detail, "TLS handshake") {
					t.Errorf("detail %q does not say %q", p.Detail, tt.detail)
				}
				if p.Attempts != 1 || took > 900*time.Millisecond {
					t.Errorf("request %d: %d attempts in %v; the refusal is the same on every handshake", i, p.Attempts, took)
				}
			}
			if n := tt.refused(); n != 3 {
				t.Errorf("%d handshakes refused; want one per request", n)
			}
			if u := t12Status(t, b).Routes[0].Upstreams[0]; u.Breaker != "open" {
				t.Errorf("breaker %q after 3 refused handshakes (failures: 3)", u.Breaker)
			}
		})
	}
	// ballast's alert reaches the server before ballast answers, which
	// the server may count a moment later.
	waitFor(t, func() bool { return tls11Alerts.Load() == 3 })
}

// Such an upstream, as a primary, falls over to an https fallback at
// once: no backoff (1s) before the fallback's answer.
func TestTLS12bVersionRefusalFallsOverAtOnce(t *testing.T) {
	var tls11Alerts atomic.Int64
	fpki := t12NewPKI(t)
	fb := t12Serve(t, fpki.issue(t, t12Loopback), func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "from the fallback")
	})
	for _, tt := range t12bRefusingUpstreams(t, &tls11Alerts) {
		t.Run(tt.name, func(t *testing.T) {
			t12FallsOverAtOnce(t, tt.url, tt.caFile, fb, fpki.caFile)
		})
	}
}

// handshake_failure is not taken as deterministic (see
// policy.Deterministic): an upstream that accepts none of ballast's
// cipher suites sends it, but so do servers failing for the moment. It
// is retried like any connect-failure, and the detail names it.
func TestTLS12bHandshakeFailureIsRetried(t *testing.T) {
	pki := t12NewPKI(t)
	var refused atomic.Int64
	srv := t12bServe(t, pki, tls.VersionTLS12, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "reached")
	}, func(c *tls.Config) {
		c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_RC4_128_SHA} // none ballast offers
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			refused.Add(1)
			return nil, nil
		}
	})
	b := startBallast(t, t12Route(srv.url, pki.caFile, "    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}}\n"))
	resp, body := do(t, "POST", b.base+"/v1/x", `{}`)
	p := t12Problem(t, resp, body, 502, "upstream_unavailable")
	if p.Attempts != 3 || refused.Load() != 3 {
		t.Errorf("%d attempts, %d handshakes refused; want handshake_failure retried (3 attempts)", p.Attempts, refused.Load())
	}
	if !strings.Contains(p.Detail, "TLS alert handshake_failure from the upstream") || !strings.Contains(p.Detail, "remote error: tls: handshake failure") {
		t.Errorf("detail %q does not name the alert", p.Detail)
	}
}
