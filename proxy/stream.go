package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
	"github.com/ballast-proxy/ballast/ratelimit"
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
// and logs that, marks the request failed on /status, and writes the
// request's decision trail when the stream ends.
type relayBody struct {
	relayState
	// What the stream's usage is read from, when its tokens are settled.
	// Kept apart from relayState so that recycling a relayBody does not
	// clear it.
	window usageWindow
}

// relayState is all of a relayBody but its usage window: zeroed when the
// relayBody goes back to its pool.
type relayState struct {
	s      *Server
	r      *route
	t      *target
	resp   *fasthttp.Response
	stream io.Reader
	id     [maxRequestIDLen]byte
	idLen  int
	n      int64
	err    error

	// A concurrency slot held until the stream ends.
	permit    ratelimit.Permit
	hasPermit bool
	// A token reservation settled, once the stream ends, from the usage
	// read in its window (its first and last bytes). Only a stream the
	// upstream ended (ended) settles: a cut one's last bytes, which say
	// what the model spent, never came (Anthropic's first event counts
	// the prompt alone), so its estimate stands.
	tokens ratelimit.Reservation
	settle bool
	ended  bool // the upstream ended the body (io.EOF)

	// Bytes prefetch read ahead, served before the rest of the stream.
	pre    []byte
	preOff int

	// The agent's connection and how long each relayed chunk may take to
	// be written to it (bound): an agent that stops reading must not hold
	// the upstream connection and the concurrency slot forever. nil agent:
	// nobody's connection (an async job).
	agent      net.Conn
	writeIdle  time.Duration // 0: no bound between chunks
	writeUntil time.Time     // zero: no overall bound

	// watch, when set, is the agent watch's entry for this stream: an
	// agent that hangs up mid-stream calls the rest of the upstream body
	// off, rather than leave it held until the upstream's next bytes (or
	// timeouts.idle) make the write to the gone agent fail.
	watch *watchedCall

	// handedOver: the body left the agent's response for a hijacked
	// connection (closeDelimited); the response's close is not its end.
	handedOver bool
	// prefetching: ballast reads the body itself (prefetch reading ahead,
	// an async job reading its answer); a break now reaches the agent as
	// an answer of its own (a whole 502, a failed job), not as a
	// truncated stream.
	prefetching bool
	// cut: the upstream broke the body off and the agent saw it truncated.
	cut bool
	// trail is the request's decision trail, written when the stream ends
	// (holdTrail); nil when none is held (an async job, a prefetch).
	trail *trail

	// halt is what calls the upstream body off (the watch's cancel when
	// the stream is watched, own otherwise); nil when nothing can.
	halt *tryCancel
	own  tryCancel
	// stopping: Shutdown's context ended with the stream still relayed,
	// and Shutdown called it off (liveStreams.stop).
	stopping atomic.Bool
	// prev and next link the stream into Server.live while its trail is
	// held.
	prev, next *relayBody
	// keep records a keyed stream for its idempotency claim, which it
	// settles when the stream ends (recordStream, settleStream).
	keep streamRecord
}

var relayBodyPool = sync.Pool{New: func() any { return new(relayBody) }}

var _ fasthttp.ReadCloserWithError = (*relayBody)(nil)

func acquireRelayBody(s *Server, r *route, t *target, resp *fasthttp.Response, stream io.Reader, id []byte) *relayBody {
	b := relayBodyPool.Get().(*relayBody)
	b.s, b.r, b.t, b.resp, b.stream = s, r, t, resp, stream
	b.idLen = copy(b.id[:], id)
	return b
}

// bound makes each chunk's write to agent end within idle (0: no limit)
// and, for all chunks, by until (zero: no limit). The write deadline is
// moved before each chunk is handed to fasthttp, which writes it next.
func (b *relayBody) bound(agent net.Conn, idle time.Duration, until time.Time) {
	if agent == nil || (idle <= 0 && until.IsZero()) {
		return
	}
	b.agent, b.writeIdle, b.writeUntil = agent, idle, until
}

func (b *relayBody) Read(p []byte) (int, error) {
	if b.agent != nil {
		d := b.writeUntil
		if b.writeIdle > 0 {
			if next := time.Now().Add(b.writeIdle); d.IsZero() || next.Before(d) {
				d = next
			}
		}
		_ = b.agent.SetWriteDeadline(d)
	}
	if b.preOff < len(b.pre) {
		n := copy(p, b.pre[b.preOff:])
		b.preOff += n
		return n, nil
	}
	n, err := b.stream.Read(p)
	b.n += int64(n)
	b.ended = err == io.EOF
	if b.settle && n > 0 {
		b.window.add(p[:n])
	}
	if b.keep.claim != nil {
		b.keep.add(p[:n])
		b.keep.eof = err == io.EOF
	}
	if err != nil && err != io.EOF && b.err == nil && !b.prefetching {
		b.err = err
		if b.stopping.Load() || b.watch.hungUp() {
			// Shutdown called it off (its line says so), or the agent
			// left: nobody sees a truncated answer.
			return n, err
		}
		b.r.m.truncated.Inc()
		b.cut = true
		b.s.log.Warn("upstream body broke mid-stream; aborting the agent's connection",
			"request_id", string(b.id[:b.idLen]), "route", b.r.name, "upstream", b.t.name,
			"bytes_relayed", b.n, "error", err.Error())
	}
	return n, err
}

// CloseWithError is called by fasthttp once the body was written, or
// writing it failed (err is then the agent-side error).
func (b *relayBody) CloseWithError(werr error) error {
	if b.handedOver {
		return nil
	}
	// The request's deadline (timeouts.total) ended the write to an agent
	// still there: ballast cut the stream, as when the upstream read runs
	// past it, though the body was already read ahead.
	if werr != nil && b.err == nil && !b.writeUntil.IsZero() && !time.Now().Before(b.writeUntil) &&
		!b.stopping.Load() && !b.watch.hungUp() {
		b.err, b.cut = werr, true
		b.r.m.truncated.Inc()
		b.s.log.Warn("the request's deadline ran out mid-stream; aborting the agent's connection",
			"request_id", string(b.id[:b.idLen]), "route", b.r.name, "upstream", b.t.name, "bytes_relayed", b.n)
	}
	// The agent left (the watch saw it hang up and called the upstream
	// body off), or writing to it failed while the upstream body was
	// fine: it did not get the whole answer.
	agentGone := b.err != nil && b.watch.hungUp() || werr != nil && b.err == nil
	stop := Reason("")
	switch {
	case b.stopping.Load():
		stop = ReasonShuttingDown
	case agentGone && !b.cut:
		stop = ReasonAgentGone
	}
	if b.trail != nil && b.cut {
		b.s.noteCut(b.r, b.t, b.trail, b.err, b.id[:b.idLen])
	}
	if b.keep.claim != nil {
		b.s.settleStream(b) // before the body lets go of the upstream: it may read the rest
	}
	// The upstream body knows whether it was read to its end, and so
	// whether its connection may be reused; closing it once is enough.
	_ = b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	if b.watch != nil {
		b.s.agents.remove(b.watch) // after the body let go of its connection
	}
	if b.agent != nil {
		_ = b.agent.SetWriteDeadline(time.Time{}) // the connection's next answer has none
	}
	now := b.s.clock.Now()
	if b.hasPermit {
		b.permit.Release(now)
	}
	if b.settle && b.ended {
		if u, ok := b.window.usage(); ok {
			b.tokens.Settle(u.Tokens(), now)
		}
	}
	if b.trail != nil {
		b.s.live.remove(b)
		b.s.endTrail(b.trail, b.n, b.cut, stop, time.Now())
	}
	b.relayState = relayState{}
	b.window.reset()
	relayBodyPool.Put(b)
	return nil
}

// prefetch reads the body ahead, up to limit bytes. whole: the body ended
// within them, and body is all of it (the relay then has nothing left to
// send). Otherwise the bytes read are kept and served first, so the agent
// still gets the whole body as a stream. err is a read error of the
// upstream body (counted and logged as by Read): what was read is then not
// all of the answer.
func (b *relayBody) prefetch(limit int64) (body []byte, whole bool, err error) {
	b.prefetching = true
	defer func() { b.prefetching = false }()
	buf := make([]byte, 0, min(limit+1, 64<<10))
	for int64(len(buf)) <= limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := b.Read(buf[len(buf):cap(buf)][:min(int64(cap(buf)-len(buf)), limit+1-int64(len(buf)))])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, true, nil
		case err != nil:
			return buf, false, err
		}
	}
	b.pre, b.preOff = buf, 0
	return nil, false, nil
}

// liveStreams are the streamed answers being relayed whose trail is held
// (holdTrail): what Shutdown calls off when its context ends, since
// fasthttp then leaves still-active connections as they are, and a relay
// may be waiting on a silent upstream. An intrusive list, so that a stream
// joins and leaves it without allocating.
type liveStreams struct {
	mu    sync.Mutex
	head  relayBody // sentinel of a circular list
	n     int
	ended bool          // stop was called: streams that join are called off at once
	empty chan struct{} // made by stop, closed when n reaches 0
}

func (l *liveStreams) add(b *relayBody) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.head.next == nil {
		l.head.prev, l.head.next = &l.head, &l.head
	}
	b.prev, b.next = l.head.prev, &l.head
	l.head.prev.next = b
	l.head.prev = b
	l.n++
	if l.ended {
		b.callOff()
	}
}

func (l *liveStreams) remove(b *relayBody) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b.next == nil {
		return
	}
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
	l.n--
	if l.n == 0 && l.empty != nil {
		close(l.empty)
		l.empty = nil
	}
}

// stop calls off every stream still relayed, and those that join later:
// each one's upstream read returns at once, and its line says
// "stopped":"shutting_down". The channel it returns is closed once all of
// them have ended (their lines written).
func (l *liveStreams) stop() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ended = true
	empty := make(chan struct{})
	if l.n == 0 {
		close(empty)
		return empty
	}
	l.empty = empty
	for b := l.head.next; b != &l.head; b = b.next {
		b.callOff()
	}
	return empty
}

// callOff marks b stopped by Shutdown and cuts its upstream read short.
func (b *relayBody) callOff() {
	b.stopping.Store(true)
	if b.halt != nil {
		b.halt.cancel()
	}
}

// closeDelimited relays a streamed answer of unknown length to an HTTP/1.0
// agent the way HTTP/1.0 frames one: no Content-Length and no chunked
// coding, which 1.0 does not have (RFC 9112 §6.1) — the body ends when
// the connection closes, as nginx sends it. fasthttp would chunk it, so
// the connection is hijacked and the answer written here. Every other
// answer is left as it is.
func (s *Server) closeDelimited(ctx *fasthttp.RequestCtx) {
	rb, ok := ctx.Response.BodyStream().(*relayBody)
	if !ok || ctx.Request.Header.IsHTTP11() || ctx.Request.Header.IsHead() || ctx.Response.Header.ContentLength() >= 0 {
		return
	}
	h := &ctx.Response.Header
	h.SetContentLength(-2) // no Content-Length
	h.Del(fasthttp.HeaderTransferEncoding)
	h.SetConnectionClose()
	head := h.AppendBytes(nil)
	rb.handedOver = true
	ctx.Response.ResetBody() // detaches rb without closing it
	rb.handedOver = false
	agent := agentSocket(ctx)
	ctx.HijackSetNoResponse(true)
	s.streams.Add(1) // fasthttp no longer counts the connection: Shutdown waits for it here
	ctx.Hijack(func(c net.Conn) {
		defer s.streams.Done()
		s.hijacked.Store(c, struct{}{})
		defer s.hijacked.Delete(c)
		_, err := c.Write(head)
		if err == nil {
			_, err = io.Copy(c, rb)
		}
		broke := rb.err != nil // read before CloseWithError clears it
		_ = rb.CloseWithError(err)
		if broke {
			// A clean close would end the body as if it were whole: a
			// reset tells the agent it was cut.
			resetOnClose(agent)
		}
	})
}

// resetOnClose makes closing c send a TCP reset rather than a FIN.
func resetOnClose(c net.Conn) {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		c = tc.NetConn()
	}
	if rc, ok := c.(*rawio.Conn); ok {
		_ = rc.SetLinger(0)
	}
}
