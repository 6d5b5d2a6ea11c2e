package e2e

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// fault answers one request in place of the fake API. next is the fake's
// normal handler, for faults that break a good answer part-way.
type fault func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc)

// script hands out faults in order, one per request; once they are spent
// the fake answers normally. It counts every request it saw.
type script struct {
	mu     sync.Mutex
	faults []fault
	hits   atomic.Int64
}

func newScript(faults ...fault) *script { return &script{faults: faults} }

// serve reads the request body (so that net/http notices when ballast
// hangs up, which ends a hang), counts the request, and runs the next fault
// or next.
func (s *script) serve(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
	s.hits.Add(1)
	s.mu.Lock()
	var f fault
	if len(s.faults) > 0 {
		f, s.faults = s.faults[0], s.faults[1:]
	}
	s.mu.Unlock()
	if f == nil {
		next(w, r)
		return
	}
	f(w, r, next)
}

// status answers code with a JSON body and the given header pairs.
func status(code int, body string, headers ...string) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.HandlerFunc) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// headersFunc computes header pairs when the fault fires (for reset
// instants relative to the moment of the answer).
func statusFunc(code int, body string, headers func() []string) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
		status(code, body, headers()...)(w, r, next)
	}
}

// resetConn reads the request and resets the connection (RST, not FIN):
// what a crashed upstream or a middlebox looks like.
func resetConn(w http.ResponseWriter, _ *http.Request, _ http.HandlerFunc) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// hang answers nothing until ballast gives up on the attempt and closes
// the connection.
func hang(_ http.ResponseWriter, r *http.Request, _ http.HandlerFunc) {
	<-r.Context().Done()
}

// malformedJSON is a 200 whose JSON body stops in the middle.
func malformedJSON(w http.ResponseWriter, _ *http.Request, _ http.HandlerFunc) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"broken","object":"chat.completion","choices":[{"index":0,"message":{"role":"assi`)
}

// cutStreamAfter runs the normal handler and aborts the response after
// its n-th flush: an SSE stream cut in the middle, the connection closed
// without the final chunk.
func cutStreamAfter(n int) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
		next(&cuttingWriter{ResponseWriter: w, left: n}, r)
	}
}

type cuttingWriter struct {
	http.ResponseWriter
	left int
}

func (c *cuttingWriter) Flush() {
	http.NewResponseController(c.ResponseWriter).Flush()
	c.left--
	if c.left <= 0 {
		// net/http closes the connection without ending the chunked body.
		panic(http.ErrAbortHandler)
	}
}

// flush flushes w, which may be a cuttingWriter.
func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}
