package bench

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestUpstreamAnswersValidJSONOfTheRequestedSize(t *testing.T) {
	for _, size := range []int{1, 1024, 4096} {
		u := NewUpstream(UpstreamConfig{Size: size})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = u.Serve(ln) }()
		status, body, err := fasthttp.Get(nil, "http://"+ln.Addr().String()+"/v1/x")
		_ = u.Shutdown()
		if err != nil || status != 200 {
			t.Fatalf("size %d: %d %v", size, status, err)
		}
		if !json.Valid(body) || (size >= 200 && len(body) != size) {
			t.Errorf("size %d: got %d bytes, valid JSON %v", size, len(body), json.Valid(body))
		}
	}
}
