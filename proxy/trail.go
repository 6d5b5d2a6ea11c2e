package proxy

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/valyala/fasthttp"
)

// trail is the decision trail of one request: what ballast did and why,
// written as one JSON line when the request ends. It is pooled and filled
// without allocating; nothing in it can hold a secret (no header values,
// no query strings, no bodies).
type trail struct {
	start    time.Time
	attempts [maxTrailAttempts]trailAttempt
	n        int // attempts recorded (more than maxTrailAttempts are counted, not kept)
	rateWait time.Duration
	idem     string // idempotency result
	// idemLate: idem is rendered when the stream ends, not in fields: a
	// keyed stream's result is known then (settleStream: too_large).
	idemLate bool
	stop     Reason // why the retry loop stopped early
	nextWait time.Duration
	nextWhy  string
	debug    bool
	// detached: the call runs to its end whether the agent waits or not
	// (an idempotency-guarded call, which a retry attaches to).
	detached bool
	// mayHaveRun: an attempt went out and may have taken effect upstream
	// without an answer of the upstream's to show for it: it broke off
	// after it was sent, timed out, or answered what validation refused.
	// A keyed call's claim is then not freed (runGuarded).
	mayHaveRun bool
	// recorded: the request is in the route's /status window (record).
	recorded bool
	// watch is the request's registration with the agent watch while
	// ballast works on its call; nil when it is not watched.
	watch *watchedCall
	// recordedAt is when the request entered the route's /status window
	// (record), so that a stream cut later can be counted as failed there.
	recordedAt time.Time
	// recordedClass is the class it was recorded with: a stream cut later
	// that had failed already is one failure, counted and listed once.
	recordedClass policy.Class
	// A streamed answer's line is written when the stream ends (holdTrail,
	// endTrail): fields holds its middle, rendered while the request was
	// still at hand; failed, whether it failed before the stream began; lc,
	// the log settings it started under.
	fields []byte
	// cache is the Cache-Status member ballast set on the answer
	// (addCacheStatus); empty when it set none, whatever the upstream's
	// own Cache-Status said.
	cache  []byte
	failed bool
	status int
	lc     config.Log
	buf    []byte
	clock  stampCache
}

type trailAttempt struct {
	upstream string
	class    policy.Class
	status   int
	took     time.Duration
	wait     time.Duration // waited before this attempt
	why      string        // why it waited: backoff, hint, cooldown
	hedged   bool          // a second copy went out too (hedge_after)
}

const (
	maxTrailAttempts = 8
	trailKey         = "ballast.trail"
)

var trailPool = sync.Pool{New: func() any { return &trail{buf: make([]byte, 0, 1024), fields: make([]byte, 0, 512)} }}

// trailOf returns the request's trail, or nil when none is kept.
func trailOf(ctx *fasthttp.RequestCtx) *trail {
	t, _ := ctx.UserValue(trailKey).(*trail)
	return t
}

// hedged marks the attempt recorded last as one that sent a second copy.
func (t *trail) hedged() {
	if t != nil && t.n > 0 && t.n <= maxTrailAttempts {
		t.attempts[t.n-1].hedged = true
	}
}

func (t *trail) attempt(upstream string, cls policy.Class, status int, took time.Duration) {
	if t == nil {
		return
	}
	if t.n < maxTrailAttempts {
		t.attempts[t.n] = trailAttempt{upstream: upstream, class: cls, status: status, took: took, wait: t.nextWait, why: t.nextWhy}
	}
	t.n++
	t.nextWait, t.nextWhy = 0, ""
}

func (t *trail) waiting(d time.Duration, why string) {
	if t != nil {
		t.nextWait += d
		t.nextWhy = why
	}
}

const (
	headerDebug = "X-Ballast-Debug"
	headerTrail = "X-Ballast-Trail"
)

// finishTrail writes the trail of a finished request (always for
// failures, sampled for successes) and returns it to the pool. Like the
// rest of ballast's logs, the line obeys the logger's level: a success is
// an INFO line and a failure a WARN line, so `--log-level warn` keeps only
// failures and `error` keeps none. end is when the request ended (wall
// time).
func (s *Server) finishTrail(ctx *fasthttp.RequestCtx, t *trail, route string, lc config.Log, end time.Time) {
	status := ctx.Response.StatusCode()
	failed := t.failedAt(ctx, status)
	if s.logsTrail(failed, lc) {
		b := t.appendJSON(t.buf[:0], ctx, route, status, failed, end)
		s.trails.write(b)
		t.buf = b
	}
	t.release()
}

// holdTrail hands the trail of a request whose answer is being streamed to
// the stream: its line is written when the stream ends (endTrail), as
// nginx and Envoy log, with the bytes relayed, the whole duration, and
// whether the upstream cut the stream. What the line says of the request
// is rendered now, while ctx is still the request's.
func (s *Server) holdTrail(ctx *fasthttp.RequestCtx, t *trail, rb *relayBody, route string, lc config.Log) {
	status := ctx.Response.StatusCode()
	t.failed, t.status = t.failedAt(ctx, status), status
	idem := t.idem
	if t.idemLate = rb.keep.claim != nil; t.idemLate {
		t.idem = ""
	}
	t.fields = t.appendFields(t.fields[:0], ctx, route, status)
	t.idem = idem
	t.lc = lc
	rb.trail = t
	s.live.add(rb) // Shutdown calls it off if it outlasts the drain
}

// endTrail writes a held trail (holdTrail) once its stream ended, at end,
// after bodyBytes bytes of body were read from the upstream and handed to
// the agent's connection; truncated: the upstream broke it off and the
// agent saw it cut. stop, when set, is why ballast ended it before its
// end: ReasonAgentGone, the agent hung up or stopped reading (it then got
// at most bodyBytes), as the line of a call the agent left before its
// answer says; ReasonShuttingDown, Shutdown's context ended with the
// stream still relayed. Either stop or truncated makes the request a
// failure. It returns the trail to the pool.
func (s *Server) endTrail(t *trail, bodyBytes int64, truncated bool, stop Reason, end time.Time) {
	failed := t.failed || truncated || stop != ""
	if s.logsTrail(failed, t.lc) {
		b := t.appendHead(t.buf[:0], failed, end)
		b = append(b, t.fields...)
		if t.idemLate && t.idem != "" {
			b = append(b, `,"idempotency":`...)
			b = appendJSONString(b, t.idem)
		}
		b = t.appendDuration(b, end)
		b = append(b, `,"body_bytes":`...)
		b = strconv.AppendInt(b, bodyBytes, 10)
		if truncated {
			b = append(b, `,"truncated":true`...)
		}
		if stop != "" && t.stop == "" { // a stop, rendered in fields, came first
			b = append(b, `,"stopped":"`...)
			b = append(b, stop...)
			b = append(b, '"')
		}
		b = append(b, "}\n"...)
		s.trails.write(b)
		t.buf = b
	}
	t.release()
}

// failedAt reports whether the request failed, judged when its answer's
// headers are ready: a 5xx, a retry loop that stopped early, or a 4xx
// that an upstream failure or ballast's own refusal caused.
func (t *trail) failedAt(ctx *fasthttp.RequestCtx, status int) bool {
	return status >= 500 || t.stop != "" || (status >= 400 &&
		(t.n > 0 && t.attempts[min(t.n, maxTrailAttempts)-1].class != policy.OK ||
			string(ctx.Response.Header.ContentType()) == problemContentType)) // ballast's own refusal
}

// logsTrail decides whether a request's line is written: always for a
// failure, sampled for a success, as the logger's level allows.
func (s *Server) logsTrail(failed bool, lc config.Log) bool {
	return failed && s.trailWarn && lc.Requests ||
		!failed && s.trailInfo && lc.Requests && (lc.SuccessSample >= 1 || (lc.SuccessSample > 0 && rand.Float64() < lc.SuccessSample))
}

// release returns the trail to the pool, keeping its buffers.
func (t *trail) release() {
	buf, fields, cache, clock := t.buf, t.fields, t.cache, t.clock
	*t = trail{buf: buf[:0], fields: fields[:0], cache: cache[:0], clock: clock}
	trailPool.Put(t)
}

// appendJSON appends the trail line of a request that ended at end.
func (t *trail) appendJSON(b []byte, ctx *fasthttp.RequestCtx, route string, status int, failed bool, end time.Time) []byte {
	b = t.appendHead(b, failed, end)
	b = t.appendFields(b, ctx, route, status)
	b = t.appendDuration(b, end)
	return append(b, "}\n"...)
}

// appendHead appends the line's start: its time and level.
func (t *trail) appendHead(b []byte, failed bool, end time.Time) []byte {
	b = append(b, `{"time":"`...)
	b = t.clock.appendRFC3339Nano(b, end)
	if failed {
		return append(b, `","level":"WARN"`...)
	}
	return append(b, `","level":"INFO"`...)
}

// appendDuration appends the time from the request's arrival until end.
func (t *trail) appendDuration(b []byte, end time.Time) []byte {
	b = append(b, `,"duration_ms":`...)
	return appendMillis(b, end.Sub(t.start))
}

// appendFields appends what the line says of the request and what ballast
// did: everything but its time, level and duration.
func (t *trail) appendFields(b []byte, ctx *fasthttp.RequestCtx, route string, status int) []byte {
	b = append(b, `,"msg":"request","request_id":`...)
	// ballast's id: when the upstream answered with an X-Request-Id of
	// its own, ours moved to X-Ballast-Request-Id (as /status shows it).
	id := ctx.Response.Header.Peek(headerRequestIDBallast)
	if len(id) == 0 {
		id = ctx.Response.Header.Peek(headerRequestID)
	}
	b = appendJSONBytes(b, id)
	if id := traceID(ctx.Request.Header.Peek("traceparent")); id != nil {
		b = append(b, `,"trace_id":`...)
		b = appendJSONBytes(b, id)
	}
	b = append(b, `,"route":`...)
	b = appendJSONString(b, route)
	b = append(b, `,"method":`...)
	b = appendJSONBytes(b, ctx.Method())
	b = append(b, `,"path":`...)
	b = appendJSONBytes(b, ctx.Path()) // never the query: it may carry keys
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	if t.rateWait > 0 {
		b = append(b, `,"ratelimit_wait_ms":`...)
		b = strconv.AppendInt(b, t.rateWait.Milliseconds(), 10)
	}
	if len(t.cache) > 0 { // ballast's outcome only: the upstream's text is a header value
		b = append(b, `,"cache":`...)
		b = appendJSONBytes(b, t.cache)
	}
	if t.idem != "" {
		b = append(b, `,"idempotency":`...)
		b = appendJSONString(b, t.idem)
	}
	if t.stop != "" {
		b = append(b, `,"stopped":`...)
		b = appendJSONString(b, string(t.stop))
	}
	if ct := ctx.Response.Header.ContentType(); string(ct) == "application/problem+json" {
		b = append(b, `,"answered_by":"ballast"`...)
	}
	b = append(b, `,"attempt_count":`...)
	b = strconv.AppendInt(b, int64(t.n), 10)
	b = append(b, `,"attempts":[`...)
	for i := range min(t.n, maxTrailAttempts) {
		a := &t.attempts[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"upstream":`...)
		b = appendJSONString(b, a.upstream)
		b = append(b, `,"outcome":`...)
		b = appendJSONString(b, a.class.String())
		if a.status > 0 {
			b = append(b, `,"status":`...)
			b = strconv.AppendInt(b, int64(a.status), 10)
		}
		b = append(b, `,"ms":`...)
		b = appendMillis(b, a.took)
		if a.hedged {
			b = append(b, `,"hedged":true`...)
		}
		if a.wait > 0 {
			b = append(b, `,"waited_ms":`...)
			b = strconv.AppendInt(b, a.wait.Milliseconds(), 10)
			b = append(b, `,"waited_for":`...)
			b = appendJSONString(b, a.why)
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

// summary is the X-Ballast-Trail debug header: attempts as
// upstream:outcome:status:ms, separated by commas.
func (t *trail) summary(b []byte) []byte {
	for i := range min(t.n, maxTrailAttempts) {
		a := &t.attempts[i]
		if i > 0 {
			b = append(b, ", "...)
		}
		if a.wait > 0 {
			b = append(b, "wait "...)
			b = strconv.AppendInt(b, a.wait.Milliseconds(), 10)
			b = append(b, "ms "...)
			b = append(b, a.why...)
			b = append(b, "; "...)
		}
		b = append(b, a.upstream...)
		b = append(b, ' ')
		b = append(b, a.class.String()...)
		if a.status > 0 {
			b = append(b, ' ')
			b = strconv.AppendInt(b, int64(a.status), 10)
		}
		b = append(b, ' ')
		b = strconv.AppendInt(b, a.took.Milliseconds(), 10)
		b = append(b, "ms"...)
	}
	if t.stop != "" {
		b = append(b, "; stopped: "...)
		b = append(b, t.stop...)
	}
	return b
}

// traceID returns the trace id of a W3C traceparent value
// ("00-<32 hex>-<16 hex>-<2 hex>"), or nil.
func traceID(tp []byte) []byte {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' {
		return nil
	}
	id := tp[3:35]
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil
		}
	}
	return id
}

func appendJSONBytes(dst, b []byte) []byte {
	// appendJSONString reads b without copying when converted this way.
	return appendJSONString(dst, unsafeString(b))
}
