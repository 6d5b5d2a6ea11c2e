package proxy_test

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkKeyedPOST measures requests carrying a fresh Idempotency-Key each
// (a claim and a completion per request) on the memory and file stores,
// against the same POSTs unkeyed, in the same run. Parallel, so the file
// store's group commit can share fsyncs as it does under load.
func BenchmarkKeyedPOST(b *testing.B) {
	for _, tc := range []struct{ name, state, idem string }{
		{"unkeyed", "", ""},
		{"memory", "state: {max_records: 10000000}\n", "    idempotency: {mode: header}\n"},
		{"file", "state: {path: %s, max_records: 10000000}\n", "    idempotency: {mode: header}\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			up := fastUpstream(b)
			state := tc.state
			if tc.name == "file" {
				state = fmt.Sprintf(state, filepath.Join(b.TempDir(), "state.db"))
			}
			bl := startBallastWith(b, nil, io.Discard, fmt.Sprintf("%sroutes:\n  - name: pay\n    match: {path_prefix: /}\n    upstream: 'http://%s'\n%s", state, up, tc.idem))
			var seq atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				c := &fasthttp.HostClient{Addr: bl.addr, MaxConns: 64,
					Dial: func(a string) (net.Conn, error) { return net.Dial("tcp", a) }}
				defer c.CloseIdleConnections()
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				req.SetRequestURI("http://" + bl.addr + "/charge")
				req.Header.SetMethod("POST")
				req.SetBodyString(`{"amount":1}`)
				for pb.Next() {
					req.Header.Set("Idempotency-Key", "k-"+strconv.FormatInt(seq.Add(1), 10))
					if err := c.DoTimeout(req, resp, 10*time.Second); err != nil || resp.StatusCode() != 200 {
						b.Fatalf("%v %d", err, resp.StatusCode())
					}
				}
			})
		})
	}
}
