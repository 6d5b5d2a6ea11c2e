package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

const (
	headerRequestID = "X-Request-Id"
	maxRequestIDLen = 128
)

// idSource makes request ids: a random per-process prefix and a counter, so
// ids are unique across restarts and cost no allocation.
type idSource struct {
	prefix [12]byte
	next   atomic.Uint64
}

func newIDSource() *idSource {
	var raw [6]byte
	_, _ = rand.Read(raw[:])
	s := &idSource{}
	hex.Encode(s.prefix[:], raw[:])
	return s
}

// assign gives the request its id — the agent's X-Request-Id when it is a
// sane value, otherwise a new one — and sets it on the response, where the
// forwarder reads it back for the outbound request.
func (s *idSource) assign(ctx *fasthttp.RequestCtx) {
	if id := ctx.Request.Header.Peek(headerRequestID); validRequestID(id) {
		ctx.Response.Header.SetBytesV(headerRequestID, id)
		return
	}
	var buf [32]byte
	b := append(buf[:0], s.prefix[:]...)
	b = append(b, '-')
	b = strconv.AppendUint(b, s.next.Add(1), 36)
	ctx.Response.Header.SetBytesV(headerRequestID, b)
}

// validRequestID accepts 1-128 visible ASCII characters.
func validRequestID(id []byte) bool { return visibleASCII(id, maxRequestIDLen) }

// visibleASCII reports whether b is 1 to max bytes of visible ASCII (no
// spaces or controls).
func visibleASCII(b []byte, max int) bool {
	if len(b) == 0 || len(b) > max {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
