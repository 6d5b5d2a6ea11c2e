package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// UpstreamConfig configures the chaos upstream. The zero value answers every
// request at once with a 1 KiB JSON document.
type UpstreamConfig struct {
	// Size is the size in bytes of the JSON answer. Default 1024; at most
	// MaxSize (larger sizes are cut to it).
	Size int
	// Profile is the latency and fault profile. The zero value injects
	// nothing.
	Profile Profile
	// Seed makes fault and latency draws reproducible: a request's fate is
	// a function of (Seed, its key, how many requests with that key came
	// before), or of (Seed, arrival number since the start or the last
	// reset at ResetPath) when it carries no key.
	Seed int64
	// StreamEvents is the number of SSE data events per stream, before the
	// final "data: [DONE]". Default 16.
	StreamEvents int
	// StreamInterval is the pause between two stream events. Default 0.
	StreamInterval time.Duration
	// StreamStamp makes every stream event carry the moment it was
	// written, as `"sent_ns":<Unix nanoseconds>`, its first member, and
	// flushes each event on its own, so that a client on the same machine
	// can tell how long the event took to reach it (the stream scenario's
	// event delay). The default is off: the events are fixed bytes.
	StreamStamp bool
	// MaxKeys bounds the operation keys the side-effect counters keep
	// (Counters.Keys), so an upstream left running under unique keys
	// does not grow without end: past it the least recently seen key is
	// evicted and Counters.EvictedKeys says how many were. A run that
	// reads duplicates must fit its operations in it. Default
	// DefaultMaxKeys.
	MaxKeys int
	// Echo makes every answer to a request with a key name that key, so a
	// test can tell an answer delivered to the wrong request: the JSON
	// body's "id" (cut in half when malformed) and each SSE event's "id"
	// are the key, and X-Bench-Echo repeats it on every answer, errors
	// included. It costs an allocation per answer; the default is off.
	Echo bool
}

// Upstream is the benchmark upstream: a fasthttp server answering a fixed
// JSON body, or an SSE stream for /v1/stream and for requests whose body
// asks "stream":true, and injecting the faults of its Profile. It counts
// side effects per key (see Counters) at GET /_bench/counters.
//
// Without faults, latency or keys, a request costs two atomic adds (the
// counters) and one SetBody: the cheapest possible upstream, so
// measurements show the proxy.
type Upstream struct {
	cfg      UpstreamConfig
	srv      *fasthttp.Server
	body     []byte
	event    []byte
	counters *counters

	done     chan struct{}
	stopOnce sync.Once

	// cuts are the cut streams writing on hijacked connections, which
	// fasthttp's Shutdown does not wait for; Shutdown does (startCut).
	cutMu   sync.Mutex
	cuts    sync.WaitGroup
	stopped bool
}

// NewUpstream builds the upstream. cfg.Profile must be valid (Validate).
func NewUpstream(cfg UpstreamConfig) *Upstream {
	if cfg.Size <= 0 {
		cfg.Size = 1024
	}
	cfg.Size = min(cfg.Size, MaxSize)
	if cfg.StreamEvents <= 0 {
		cfg.StreamEvents = 16
	}
	if cfg.Profile.RetryAfter <= 0 {
		cfg.Profile.RetryAfter = time.Second
	}
	if cfg.Profile.HangFor <= 0 {
		cfg.Profile.HangFor = time.Minute
	}
	body := jsonBody(cfg.Size)
	u := &Upstream{
		cfg:      cfg,
		body:     body,
		event:    []byte(`data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"token "}}]}` + "\n\n"),
		counters: newCounters(cfg.MaxKeys),
		done:     make(chan struct{}),
	}
	u.srv = &fasthttp.Server{
		Handler:               u.handle,
		NoDefaultServerHeader: true,
		CloseOnShutdown:       true,
		// A cut stream closes its hijacked connection itself, before
		// Shutdown is told it has ended (cutStream).
		KeepHijackedConns: true,
		Logger:            quietLogger{},
	}
	return u
}

// Serve answers on ln until Shutdown.
func (u *Upstream) Serve(ln net.Listener) error { return u.srv.Serve(ln) }

// Shutdown ends hangs and streams, then stops the server. When it
// returns, no stream writes any more, and a cut stream's connection is
// closed.
func (u *Upstream) Shutdown() error {
	u.stopOnce.Do(func() { close(u.done) })
	err := u.srv.Shutdown()
	u.cutMu.Lock()
	u.stopped = true
	u.cutMu.Unlock()
	u.cuts.Wait()
	return err
}

// startCut counts a cut stream in, for Shutdown to wait for; false once
// Shutdown has begun: the stream must then write nothing. The count is
// taken on the hijacked connection's goroutine, not in the handler:
// fasthttp skips the hijack when the connection fails first, and a count
// taken for it would never be given back.
func (u *Upstream) startCut() bool {
	u.cutMu.Lock()
	defer u.cutMu.Unlock()
	if u.stopped {
		return false
	}
	u.cuts.Add(1)
	return true
}

// Counters returns a snapshot of the side-effect counters.
func (u *Upstream) Counters() Counters { return u.counters.snapshot() }

func (u *Upstream) handle(ctx *fasthttp.RequestCtx) {
	if bytes.HasPrefix(ctx.Path(), benchPrefix) && u.counters.serve(ctx) {
		return
	}
	key := ctx.Request.Header.Peek("Idempotency-Key")
	if len(key) == 0 {
		key = ctx.Request.Header.Peek("X-Bench-Op")
	}
	stream := isStream(ctx)
	if len(key) == 0 && !stream && !u.cfg.Profile.faulty() {
		u.counters.fault(faultNone)
		ctx.SetContentType("application/json")
		ctx.SetBody(u.body)
		return
	}
	var n uint64
	if len(key) > 0 {
		n = uint64(u.counters.arrive(key))
	} else {
		n = u.counters.next()
	}
	r := newDraw(u.cfg.Seed, key, n)
	f := u.cfg.Profile.pick(r.float()*100, stream)
	d := u.cfg.Profile.delay(1 - r.float())
	u.counters.fault(f)
	body, event := u.body, u.event
	if u.cfg.Echo && len(key) > 0 {
		ctx.Response.Header.SetBytesV(echoHeader, key)
		body, event = echoBody(u.cfg.Size, key), echoEvent(key)
	}
	if len(key) > 0 && f.sideEffect() {
		u.counters.effect(key)
	}
	if d > 0 && !u.wait(d) {
		ctx.SetConnectionClose()
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		return
	}
	switch f {
	case fault500:
		u.errorJSON(ctx, fasthttp.StatusInternalServerError, `{"error":{"message":"The server had an error while processing your request.","type":"server_error"}}`)
	case fault503:
		u.errorJSON(ctx, fasthttp.StatusServiceUnavailable, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
	case fault429:
		u.rateLimited(ctx)
	case faultReset:
		reset(ctx.Conn())
	case faultHang:
		u.wait(u.cfg.Profile.HangFor)
		ctx.SetConnectionClose()
		_ = ctx.Conn().Close()
	case faultMalformed:
		if stream {
			u.stream(ctx, event, false, true)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(body[:len(body)/2])
	default:
		if stream {
			u.stream(ctx, event, f == faultCut, false)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(body)
	}
}

// wait sleeps for d, or until Shutdown; it reports whether d elapsed.
func (u *Upstream) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-u.done:
		return false
	}
}

func (u *Upstream) errorJSON(ctx *fasthttp.RequestCtx, status int, body string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(body)
}

// rateLimited answers 429 with every provider's reset hint, all pointing
// Profile.RetryAfter ahead.
func (u *Upstream) rateLimited(ctx *fasthttp.RequestCtx) {
	ra := u.cfg.Profile.RetryAfter
	h := &ctx.Response.Header
	secs := int64((ra + time.Second - 1) / time.Second)
	h.Set("Retry-After", strconv.FormatInt(secs, 10))
	h.Set("retry-after-ms", strconv.FormatInt(ra.Milliseconds(), 10))
	h.Set("x-ratelimit-limit-requests", "60")
	h.Set("x-ratelimit-remaining-requests", "0")
	h.Set("x-ratelimit-reset-requests", ra.String())
	h.Set("x-ratelimit-remaining-tokens", "0")
	h.Set("x-ratelimit-reset-tokens", ra.String())
	// RFC 3339 with milliseconds, rounded up: the instant is never before
	// RetryAfter from now, nor (as whole seconds would make it) up to a
	// second later than the other hints, which a client that honours the
	// longest hint, as ballast's cool-down does, would wait out.
	reset := time.Now().Add(ra + time.Millisecond - 1).UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z07:00")
	h.Set("anthropic-ratelimit-requests-limit", "60")
	h.Set("anthropic-ratelimit-requests-remaining", "0")
	h.Set("anthropic-ratelimit-requests-reset", reset)
	h.Set("anthropic-ratelimit-tokens-remaining", "0")
	h.Set("anthropic-ratelimit-tokens-reset", reset)
	u.errorJSON(ctx, fasthttp.StatusTooManyRequests, `{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`)
}

// stream answers an SSE stream of event. cut stops half-way by closing
// the connection without the final chunk (cutStream); broken sends one
// unparseable event.
func (u *Upstream) stream(ctx *fasthttp.RequestCtx, event []byte, cut, broken bool) {
	if cut {
		u.cutStream(ctx, event)
		return
	}
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	events, stamp := u.cfg.StreamEvents, u.cfg.StreamStamp
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		var stamped []byte
		for i := range events {
			switch {
			case broken && i == events/2:
				_, _ = w.WriteString("data: {\"id\":\"chatcmpl-bench\",\"choices\":[{\"delta\n\n")
			case stamp:
				stamped = stampEvent(stamped[:0], event, time.Now())
				_, _ = w.Write(stamped)
			default:
				_, _ = w.Write(event)
			}
			if !u.pause(w, stamp) {
				return
			}
		}
		_, _ = w.WriteString("data: [DONE]\n\n")
	})
}

// cutStream writes the head and the first half of a stream of event
// straight to the connection, then closes it without the last chunk.
// fasthttp's body stream writer cannot: what it is given goes through a
// pipe that the server copies to the connection later, so a close from it
// could come first, and the agent saw a connection closed before any
// answer instead of a stream cut short.
func (u *Upstream) cutStream(ctx *fasthttp.RequestCtx, event []byte) {
	events, stamp := u.cfg.StreamEvents, u.cfg.StreamStamp
	echo := ctx.Response.Header.Peek(echoHeader)
	head := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
	if len(echo) > 0 {
		head += echoHeader + ": " + string(echo) + "\r\n"
	}
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		if !u.startCut() {
			_ = c.Close()
			return
		}
		defer u.cuts.Done()
		defer c.Close() // before Done: Shutdown returns with it closed
		w := bufio.NewWriter(c)
		_, _ = w.WriteString(head + "\r\n")
		var stamped []byte
		for range events / 2 {
			b := event
			if stamp {
				stamped = stampEvent(stamped[:0], event, time.Now())
				b = stamped
			}
			_, _ = fmt.Fprintf(w, "%x\r\n%s\r\n", len(b), b)
			if !u.pause(w, true) {
				return
			}
		}
		_ = w.Flush()
		// Closing c ends the answer without its last chunk.
	})
}

// pause ends one event: it flushes w when events go out one at a time
// (flush, or a StreamInterval set) and waits StreamInterval. It reports
// false when the stream must stop: the client is gone, or Shutdown.
func (u *Upstream) pause(w *bufio.Writer, flush bool) bool {
	interval := u.cfg.StreamInterval
	if interval <= 0 && !flush {
		return true
	}
	if err := w.Flush(); err != nil {
		return false
	}
	if interval <= 0 {
		return true
	}
	t := time.NewTimer(interval)
	select {
	case <-t.C:
		return true
	case <-u.done:
		t.Stop()
		return false
	}
}

var benchPrefix = []byte("/_bench/")

// echoHeader carries the request's key back with Echo.
const echoHeader = "X-Bench-Echo"

// isStream reports a request for an SSE answer.
func isStream(ctx *fasthttp.RequestCtx) bool {
	if string(ctx.Path()) == "/v1/stream" {
		return true
	}
	b := ctx.Request.Body()
	return bytes.Contains(b, []byte(`"stream":true`)) || bytes.Contains(b, []byte(`"stream": true`))
}

// reset aborts conn with a TCP RST (SO_LINGER 0) where it can.
func reset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// jsonBody returns a valid chat-completion-shaped JSON document of exactly
// size bytes (at least its fixed envelope).
func jsonBody(size int) []byte {
	const head = `{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	const tail = `"},"finish_reason":"stop"}]}`
	pad := max(size-len(head)-len(tail), 0)
	var b bytes.Buffer
	b.WriteString(head)
	b.Write(bytes.Repeat([]byte("x"), pad))
	b.WriteString(tail)
	return b.Bytes()
}

// echoBody is jsonBody(size) with key, JSON-quoted, as its "id".
func echoBody(size int, key []byte) []byte {
	id, _ := json.Marshal(string(key))
	const head, tail = `{"id":`, `,"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"pad":"`
	pad := max(size-len(head)-len(id)-len(tail)-2, 0)
	b := make([]byte, 0, len(head)+len(id)+len(tail)+pad+2)
	b = append(b, head...)
	b = append(b, id...)
	b = append(b, tail...)
	b = append(b, bytes.Repeat([]byte("x"), pad)...)
	return append(b, `"}`...)
}

// echoEvent is a stream event with key, JSON-quoted, as its "id".
func echoEvent(key []byte) []byte {
	id, _ := json.Marshal(string(key))
	return []byte(`data: {"id":` + string(id) + `,"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"token "}}]}` + "\n\n")
}

// stampEvent appends event to dst with `"sent_ns":<now in Unix
// nanoseconds>,` as its first member: events are `data: {...}` lines
// (see readStamp for the reading side). An event of another shape is
// appended as it is.
func stampEvent(dst, event []byte, now time.Time) []byte {
	const open = "data: {"
	if !bytes.HasPrefix(event, []byte(open)) {
		return append(dst, event...)
	}
	dst = append(dst, open...)
	dst = append(dst, `"sent_ns":`...)
	dst = strconv.AppendInt(dst, now.UnixNano(), 10)
	dst = append(dst, ',')
	return append(dst, event[len(open):]...)
}

// quietLogger drops fasthttp's own messages: resets and hangs are on
// purpose here.
type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}
