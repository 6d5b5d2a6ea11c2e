//go:build !race

package proxy_test

import (
	"bytes"
	"net"
	"testing"
)

// gatedChains are the route configs the allocation gates hold to zero:
// ballast's defaults (retries, budget, breaker and cool-down armed, trail
// on), and the full happy-path chain the benchmark harness measures.
var gatedChains = []struct{ name, extra string }{
	{"defaults", ""},
	{"full chain", fullChain},
}

// TestPassThroughAllocations is the allocation gate: a proxied request, in
// steady state, allocates nothing — in ballast, in the fasthttp client that
// sends it, or in the upstream. (The race detector allocates, so the gate
// is built without it; `make test` runs it in a second, race-free pass.)
//
// A request with a body allocates once, in fasthttp's server and not in
// ballast: after each streamed request body (ballast sets
// StreamRequestBody to enforce each route's max_body without buffering),
// fasthttp's requestStream.discard drains the rest with io.CopyN, whose
// io.LimitReader escapes (24 B). The POST case holds ballast to that one.
func TestPassThroughAllocations(t *testing.T) {
	for _, chain := range gatedChains {
		for _, req := range []struct {
			method, body string
			want         float64
		}{
			{method: "GET"},
			{method: "POST", body: `{"model":"bench-1","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`, want: 1},
		} {
			t.Run(chain.name+"/"+req.method, func(t *testing.T) {
				bl := benchBallastWith(t, chain.extra)
				p := newPassThrough(t, bl.addr, "/v1/chat/completions")
				if req.body != "" {
					p.req.Header.SetMethod(req.method)
					p.req.Header.SetContentType("application/json")
					p.req.SetBodyString(req.body)
				}
				for range 100 { // warm the pools
					p.do(t)
				}
				allocs := testing.AllocsPerRun(1000, func() { p.do(t) })
				if allocs > req.want {
					t.Errorf("a pass-through %s allocates %.2f times; want at most %.0f", req.method, allocs, req.want)
				}
			})
		}
	}
}

// TestPassThroughAllocationsWithoutAFasthttpClient is the gate with an
// agent that is not fasthttp (a raw socket, as wrk or any SDK is): in the
// gate above, the client's own response buffers also return to fasthttp's
// body pool and can hide a proxy that starves it. The warm-up runs past
// the pool's recalibration (every 42,000 returns), where a pool fed only
// emptied buffers starts dropping the full ones.
func TestPassThroughAllocationsWithoutAFasthttpClient(t *testing.T) {
	for _, chain := range gatedChains {
		t.Run(chain.name, func(t *testing.T) {
			bl := benchBallastWith(t, chain.extra)
			c := newRawClient(t, bl.addr, "/v1/chat/completions")
			for range 50_000 {
				c.do(t)
			}
			allocs := testing.AllocsPerRun(2000, func() { c.do(t) })
			if allocs > 0 {
				t.Errorf("a pass-through request allocates %.2f times; the hot path must not allocate", allocs)
			}
		})
	}
}

// rawClient sends one fixed keep-alive request at a time on a TCP
// connection and reads the answer into a fixed buffer: an agent that
// allocates nothing and shares no pool with ballast.
type rawClient struct {
	conn net.Conn
	req  []byte
	buf  []byte
}

func newRawClient(tb testing.TB, addr, path string) *rawClient {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer sk-bench\r\n\r\n"
	return &rawClient{conn: conn, req: []byte(req), buf: make([]byte, 64<<10)}
}

// do sends the request and reads one response whose body is jsonAnswer.
func (c *rawClient) do(tb testing.TB) {
	if _, err := c.conn.Write(c.req); err != nil {
		tb.Fatal(err)
	}
	n, end := 0, -1
	for end < 0 || n < end+len(jsonAnswer) {
		m, err := c.conn.Read(c.buf[n:])
		if err != nil {
			tb.Fatalf("after %d bytes: %v", n, err)
		}
		n += m
		if end < 0 {
			if i := bytes.Index(c.buf[:n], []byte("\r\n\r\n")); i >= 0 {
				end = i + 4
			}
		}
	}
	if !bytes.HasPrefix(c.buf, []byte("HTTP/1.1 200 ")) || !bytes.Equal(c.buf[end:n], jsonAnswer) {
		tb.Fatalf("unexpected answer %q", c.buf[:n])
	}
}
