package proxy

import (
	"io"
	"sync"

	"github.com/valyala/fasthttp"
)

// relayBody streams an upstream response body to the agent. It owns the
// upstream response until fasthttp closes it after writing: then the
// upstream connection goes back to the pool (or is dropped, when the body
// was not read to its end) and the response is released.
//
// When the upstream breaks mid-body, Read returns the error; fasthttp then
// aborts the agent's connection without the final chunk, so the agent sees
// a truncated response rather than a clean, complete one. relayBody counts
// and logs that.
type relayBody struct {
	s      *Server
	r      *route
	t      *target
	resp   *fasthttp.Response
	stream io.Reader
	id     [maxRequestIDLen]byte
	idLen  int
	n      int64
	err    error
}

var relayBodyPool = sync.Pool{New: func() any { return new(relayBody) }}

var _ fasthttp.ReadCloserWithError = (*relayBody)(nil)

func acquireRelayBody(s *Server, r *route, t *target, resp *fasthttp.Response, stream io.Reader, id []byte) *relayBody {
	b := relayBodyPool.Get().(*relayBody)
	b.s, b.r, b.t, b.resp, b.stream = s, r, t, resp, stream
	b.idLen = copy(b.id[:], id)
	return b
}

func (b *relayBody) Read(p []byte) (int, error) {
	n, err := b.stream.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
		b.r.m.truncated.Inc()
		b.s.log.Warn("upstream body broke mid-stream; aborting the agent's connection",
			"request_id", string(b.id[:b.idLen]), "route", b.r.name, "upstream", b.t.name,
			"bytes_relayed", b.n, "error", err.Error())
	}
	return n, err
}

// CloseWithError is called by fasthttp once the body was written, or
// writing it failed (err is then the agent-side error).
func (b *relayBody) CloseWithError(error) error {
	// The upstream body knows whether it was read to its end, and so
	// whether its connection may be reused; closing it once is enough.
	_ = b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	*b = relayBody{}
	relayBodyPool.Put(b)
	return nil
}
