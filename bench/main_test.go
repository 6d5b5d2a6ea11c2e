package bench

import (
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp's pool cleaners sleep on their own timers and exit on
		// the next tick after Shutdown; they are not per-request goroutines.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		// fasthttp keeps one process-wide goroutine that updates the Date header.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}

// serve runs an in-process upstream on loopback until the test ends.
func serve(t *testing.T, cfg UpstreamConfig) (*Upstream, string) {
	t.Helper()
	u := NewUpstream(cfg)
	return u, serveOnLoopback(t, u)
}

// loopbackServer is what serveOnLoopback runs: an Upstream, a BareProxy or
// a fasthttp.Server.
type loopbackServer interface {
	Serve(net.Listener) error
	Shutdown() error
}

// serveOnLoopback runs srv on a fresh loopback port until the test ends,
// when it shuts srv down and waits for Serve to return; it returns the
// address.
func serveOnLoopback(t *testing.T, srv loopbackServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return ln.Addr().String()
}

// testClient is a non-retrying client whose connections close with the test.
func testClient(t *testing.T, addr string) *fasthttp.HostClient {
	c := newClient(addr, 16, time.Second, nil)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// call sends one request and returns the response (released with the test).
func call(t *testing.T, c *fasthttp.HostClient, method, addr, path, body string, timeout time.Duration, headers ...string) (*fasthttp.Response, error) {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	resp := fasthttp.AcquireResponse()
	t.Cleanup(func() { fasthttp.ReleaseResponse(resp) })
	req.SetRequestURI("http://" + addr + path)
	req.Header.SetMethod(method)
	if body != "" {
		req.SetBodyString(body)
		req.Header.SetContentType("application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return resp, c.DoTimeout(req, resp, timeout)
}
