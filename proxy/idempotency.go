package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

const (
	headerIdempotencyKey = "Idempotency-Key"
	headerReplayed       = "Idempotent-Replayed"
	maxIdempotencyKeyLen = 255
)

// idemPolicy is a route's resolved idempotency block.
type idemPolicy struct {
	auto              bool
	ttl, window       time.Duration
	lease             time.Duration
	headers           [][]byte
	listsSession      bool // headers names Mcp-Session-Id
	reject            bool
	storeServerErrors bool
	idempotent        bool
}

func buildIdem(rc *config.Route) *idemPolicy {
	ic := rc.Idempotency
	if ic.Mode == "off" || ic.Mode == "" {
		return nil
	}
	p := &idemPolicy{
		auto: ic.Mode == "auto", ttl: ic.TTL.D(), window: ic.Window.D(),
		// The claim must outlive the call it guards, body included.
		lease:  rc.Timeouts.Total.D() + 30*time.Second,
		reject: ic.OnConflict == "reject", storeServerErrors: ic.StoreServerErrors, idempotent: ic.Idempotent,
	}
	for _, h := range ic.Headers {
		p.headers = append(p.headers, []byte(h))
		p.listsSession = p.listsSession || strings.EqualFold(h, headerMcpSession)
	}
	return p
}

// headerMcpSession names the MCP session a request belongs to.
const headerMcpSession = "Mcp-Session-Id"

var strMcpSession = []byte(headerMcpSession)

// idemKey returns the request's idempotency key — the agent's
// Idempotency-Key, or in auto mode the request's fingerprint — scoped to
// the route and the caller's identity, so records never cross tenants.
// ok is false when the request is not guarded; a malformed key is answered
// 400 here (handled true).
func (s *Server) idemKey(ctx *fasthttp.RequestCtx, r *route, fp [32]byte) (key string, ok, handled bool) {
	var raw []byte
	if r.idem.auto {
		var hexFP [64]byte
		hex.Encode(hexFP[:], fp[:])
		raw = hexFP[:]
	} else {
		lines := ctx.Request.Header.PeekAll(headerIdempotencyKey)
		if len(lines) == 0 {
			return "", false, false
		}
		raw = lines[0]
		for _, v := range lines[1:] {
			if !bytes.Equal(v, raw) {
				// Two keys name two calls: guarding it under either one
				// would let the other run it again (RFC 8941 §4.2: a
				// repeated Item fails to parse).
				writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Route: r.name,
					Detail: "Idempotency-Key was sent more than once with different values"})
				return "", false, true
			}
		}
		if len(raw) == 0 {
			return "", false, false
		}
		if !visibleASCII(raw, maxIdempotencyKeyLen) {
			writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Route: r.name,
				Detail: "Idempotency-Key must be 1-255 visible ASCII characters"})
			return "", false, true
		}
	}
	var buf [512]byte
	b := append(buf[:0], r.name...)
	b = append(b, '|')
	b = appendTenant(b, &ctx.Request.Header)
	b = append(b, '|')
	b = append(b, raw...)
	return string(b), true, false
}

// identityHeaders are cache.DefaultIdentityHeaders, resolved once.
var identityHeaders = cache.DefaultIdentityHeaders()

// tenantOf hashes the caller's identity headers (never stored raw).
func tenantOf(h *fasthttp.RequestHeader) string {
	var buf [24]byte
	return string(appendTenant(buf[:0], h))
}

// appendTenant appends tenantOf's 24 hex digits to b (see headerSum).
func appendTenant(b []byte, h *fasthttp.RequestHeader) []byte {
	sum := headerSum(h, identityHeaders)
	return hex.AppendEncode(b, sum[:])
}

// headerSum is the first 12 bytes of SHA-256 over each line of the headers
// names that h has, as name, 0, value, 0: who the request is, without
// keeping its secrets. Every line counts, not only the first: a second
// Authorization line is as much the caller's as the first.
func headerSum(h *fasthttp.RequestHeader, names []string) [12]byte {
	var scratch [1024]byte
	in := scratch[:0]
	for _, name := range names {
		for _, v := range h.PeekAll(name) {
			if len(v) > 0 {
				in = append(in, name...)
				in = append(in, 0)
				in = append(in, v...)
				in = append(in, 0)
			}
		}
	}
	sum := sha256.Sum256(in)
	return [12]byte(sum[:12])
}

// guard runs a request under its idempotency key: the first claims it and
// runs; a duplicate attaches to the running call (or is refused, per
// on_conflict), replays the stored response, or learns that the outcome is
// unknown. It reports false when the request is not guarded, so the caller
// runs it plainly.
func (s *Server) guard(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time) bool {
	fp := store.Fingerprint(ctx.Method(), ctx.RequestURI(), body, s.fingerprintHeaders(ctx, r)...)
	key, ok, handled := s.idemKey(ctx, r, fp)
	if handled {
		return true
	}
	if !ok {
		return false
	}
	ttl := r.idem.ttl
	if r.idem.auto {
		ttl = r.idem.window
	}
	// The deadline's context (a timer) is armed only when something waits
	// on it: a networked store's every call, a local store's Wait.
	var (
		wctx   = context.Background()
		cancel context.CancelFunc
	)
	bounded := func() context.Context {
		if cancel == nil {
			wctx, cancel = context.WithDeadline(context.Background(), s.wall(deadline))
		}
		return wctx
	}
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	if !s.stateLocal {
		bounded()
	}
	for {
		now := s.clock.Now()
		rec, owned, err := s.state.Claim(wctx, key, store.ClaimArgs{
			Fingerprint: fp, Now: now, Lease: r.idem.lease, TTL: ttl, TakeOverUnknown: r.idem.idempotent,
		})
		switch {
		case errors.Is(err, store.ErrMismatch):
			s.noteIdem(ctx, r, idemMismatch)
			writeMismatch(ctx, r)
			return true
		case err != nil:
			s.stateUnavailable(ctx, r, err)
			return true
		case owned:
			s.noteIdem(ctx, r, idemClaimed)
			s.runGuarded(ctx, r, body, deadline, rec, ttl)
			return true
		}
		switch {
		case rec.State == store.Completed && !outcomeLost(rec.Response):
			s.noteIdem(ctx, r, idemReplayed)
			replay(ctx, rec.Response)
			return true
		case rec.State == store.Completed, rec.State == store.UnknownOutcome:
			s.noteIdem(ctx, r, idemUnknown)
			writeOutcomeUnknown(ctx, r, rec)
			return true
		}
		// In flight elsewhere: attach, or refuse.
		if r.idem.reject {
			s.noteIdem(ctx, r, idemConflict)
			writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonInProgress, Route: r.name,
				RetryAfter: time.Second, Detail: "a request with this key is still running"})
			return true
		}
		s.noteIdem(ctx, r, idemAttached)
		got, err := s.state.Wait(bounded(), key)
		switch {
		case err != nil && wctx.Err() != nil:
			writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonInProgress, Route: r.name,
				RetryAfter: time.Second, Detail: "a request with this key is still running; it did not finish within this request's deadline"})
			return true
		case err != nil:
			s.stateUnavailable(ctx, r, err)
			return true
		case got == nil:
			continue // released without an outcome: claim again
		case got.State == store.Completed && outcomeLost(got.Response):
			writeOutcomeUnknown(ctx, r, got) // counted once, as attached
			return true
		case got.State == store.Completed:
			replay(ctx, got.Response) // counted once, as attached
			return true
		}
		// Unknown outcome: loop once more to report it.
	}
}

// writeOutcomeUnknown answers a duplicate of the call rec whose outcome
// is not known: 409 outcome_unknown.
func writeOutcomeUnknown(ctx *fasthttp.RequestCtx, r *route, rec *store.Record) {
	writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonOutcomeUnknown, Route: r.name,
		Detail: "a request with this key started at " + rec.StartedAt.UTC().Format(time.RFC3339) +
			" but its outcome was lost (ballast stopped mid-call, the upstream broke off, timed out or answered invalidly after the request was sent, or the answer could not be recorded);" +
			" it may or may not have taken effect. Check before retrying with a new key."})
}

// lostOutcome is the response a keyed call records when an attempt may
// have run upstream but ballast answered the agent itself (runGuarded):
// the store has no state for "ended, outcome unknown" that its owner sets,
// so the record completes with this marker, and duplicates read it as
// outcome_unknown instead of running the call again.
var lostOutcome = store.Response{Status: fasthttp.StatusConflict, Header: []byte("X-Ballast-Outcome: unknown\r\n")}

// outcomeLost reports whether sr is the lostOutcome marker.
func outcomeLost(sr *store.Response) bool {
	return sr != nil && sr.Status == lostOutcome.Status && len(sr.Body) == 0 && bytes.Equal(sr.Header, lostOutcome.Header)
}

// writeMismatch answers a request whose idempotency key was used with
// another request: 422 idempotency_mismatch.
func writeMismatch(ctx *fasthttp.RequestCtx, r *route) {
	writeProblem(ctx, problem{Status: fasthttp.StatusUnprocessableEntity, Reason: ReasonIdempotencyMismatch, Route: r.name,
		Detail: "this Idempotency-Key was used with a different request (method, path, body or headers differ)"})
}

// fingerprintHeaders are the header values auto mode's fingerprint
// covers: the route's idempotency.headers, then the request's
// Mcp-Session-Id when it has one the route does not list. JSON-RPC ids
// restart at 1 in every MCP session, so two sessions' calls can be
// identical byte for byte, and one session must not be answered with the
// other's replay (the cache keys on the session for the same reason). A
// request without a session fingerprints as before.
func (s *Server) fingerprintHeaders(ctx *fasthttp.RequestCtx, r *route) [][]byte {
	if !r.idem.auto {
		return nil
	}
	var session []byte
	if !r.idem.listsSession {
		session = ctx.Request.Header.PeekBytes(strMcpSession)
	}
	if len(r.idem.headers) == 0 && len(session) == 0 {
		return nil
	}
	out := make([][]byte, 0, len(r.idem.headers)+1)
	for _, h := range r.idem.headers {
		out = append(out, ctx.Request.Header.PeekBytes(h))
	}
	if len(session) > 0 {
		out = append(out, session)
	}
	return out
}

// runGuarded runs the claimed request and records its outcome. The call is
// detached from the agent: it runs to the route's deadline even when the
// agent's client gives up, so the agent's retry attaches or replays.
func (s *Server) runGuarded(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, rec *store.Record, ttl time.Duration) {
	// In header mode the key travels upstream, which can dedupe a repeat,
	// so the guard makes ballast's own retries safe. In auto mode nothing
	// tells the upstream, so the usual retry safety rules apply.
	if tr := trailOf(ctx); tr != nil {
		tr.detached = true
	}
	s.run(ctx, r, body, deadline, !r.idem.auto)
	if tr := trailOf(ctx); tr != nil && tr.stop == ReasonShuttingDown && tr.n > 0 {
		// Shutdown called the call off with an attempt sent (agentWatch.halt,
		// or its answer's prefetch below): it may have run. The claim stays,
		// as a crash leaves it, and a retry reads outcome_unknown.
		return
	}
	resp := &ctx.Response
	status := resp.StatusCode()
	fromUpstream := len(resp.Header.Peek(headerUpstream)) > 0
	// A 429 says "not now", not what the call did: stored, it would be
	// replayed, Retry-After and all, to every retry for the record's ttl.
	storable := fromUpstream && status != fasthttp.StatusTooManyRequests && (status < 500 || r.idem.storeServerErrors)
	if tr := trailOf(ctx); !fromUpstream && tr != nil && tr.mayHaveRun {
		// ballast answered itself after an attempt that may have run
		// upstream: a freed key would let the agent's retry run it twice.
		s.settleLost(r, rec, ttl)
		return
	}
	if storable && resp.IsBodyStream() && !validate.IsStream(resp.Header.ContentType()) {
		// The transport streams bodies over 64KiB and chunked ones; a
		// keyed answer is read whole up to the store's limit, so that it
		// runs once whatever its size.
		if !s.bufferGuarded(ctx, r) {
			if tr := trailOf(ctx); tr != nil && tr.stop == ReasonShuttingDown {
				return // the call ran: the claim stays (see above)
			}
			// The upstream answered, then broke off its body: the call
			// ran, and its answer is lost.
			s.settleLost(r, rec, ttl)
			return
		}
	}
	if storable && resp.IsBodyStream() && validate.IsStream(resp.Header.ContentType()) && s.recordStream(ctx, rec, ttl) {
		return // the stream settles the claim when it ends (settleStream)
	}
	if resp.IsBodyStream() || !storable {
		// What is not recorded (a GET's standing stream, a larger answer)
		// is not replayed; answers ballast wrote itself and (by default)
		// server errors leave the key free for a retry.
		if storable && resp.IsBodyStream() && !validate.IsStream(resp.Header.ContentType()) {
			s.noteIdem(ctx, r, idemTooLarge)
		}
		s.settle(r, rec, nil, ttl)
		return
	}
	sr := &store.Response{Status: status, Header: cache.AppendResponseHeader(nil, resp), Body: resp.Body()}
	if int64(sr.Size()) > s.maxStored {
		s.noteIdem(ctx, r, idemTooLarge)
		s.settle(r, rec, nil, ttl)
		return
	}
	s.settle(r, rec, sr, ttl)
}

// streamRecord is a keyed stream's answer, recorded as it is relayed so
// that its claim completes with it once the stream ends (recordStream,
// settleStream). The zero value records nothing.
type streamRecord struct {
	claim  *store.Record // the claim the stream settles; nil: not recording
	ttl    time.Duration
	status int
	header []byte
	// body is what the upstream sent so far; nil once it outgrew room
	// (the answer is over state.max_response_bytes) or the header did.
	body *bytebufferpool.ByteBuffer
	room int64
	eof  bool // the upstream ended the body: body is all of it
}

// add records p, the next bytes of the stream.
func (k *streamRecord) add(p []byte) {
	if k.body == nil || len(p) == 0 {
		return
	}
	if int64(len(k.body.B)+len(p)) > k.room {
		k.drop()
		return
	}
	k.body.B = growWithin(k.body.B, len(p), k.room)
	k.body.B = append(k.body.B, p...)
}

// growWithin returns b with room for n more bytes, its capacity grown as
// append grows it (about doubling) but never past limit unless n needs
// it: a record that may hold up to limit bytes never holds a buffer of
// twice that.
func growWithin(b []byte, n int, limit int64) []byte {
	need := len(b) + n
	if need <= cap(b) {
		return b
	}
	c := int(min(max(int64(2*cap(b)), int64(need)), max(limit, int64(need))))
	grown := make([]byte, len(b), c)
	copy(grown, b)
	return grown
}

// drop gives up the recorded body: the answer is too large to store.
func (k *streamRecord) drop() {
	if k.body != nil {
		bytebufferpool.Put(k.body)
		k.body = nil
	}
}

// recordStream has the keyed stream ctx answers with (an event stream,
// NDJSON: validate.IsStream) recorded as it is relayed, without holding
// any of it back: the claim rec stays in flight, so duplicates attach to
// it, until the stream ends and settleStream settles it. It reports
// false, leaving the claim to the caller, for a stream it does not
// record: a HEAD's (no body) and a GET's, a standing stream (MCP's) that
// the total deadline does not end, whose claim would outlive its lease.
func (s *Server) recordStream(ctx *fasthttp.RequestCtx, rec *store.Record, ttl time.Duration) bool {
	rb, ok := ctx.Response.BodyStream().(*relayBody)
	if !ok || ctx.IsGet() || ctx.IsHead() {
		return false
	}
	k := &rb.keep
	k.claim, k.ttl, k.status = rec, ttl, ctx.Response.StatusCode()
	k.header = cache.AppendHeader(nil, &ctx.Response.Header)
	k.room = s.maxStored - int64(len(k.header))
	if size := ctx.Response.Header.ContentLength(); k.room >= 0 && int64(size) <= k.room {
		k.body = bytebufferpool.Get()
	}
	return true
}

// settleStream settles the claim of a keyed stream (recordStream) once
// its relay has ended. A stream the upstream ended whole is stored, and
// replays as a buffered answer does; one over max_response_bytes frees
// the key (too_large), as a larger buffered answer does. One the upstream
// broke off or let time out ran without a whole answer: its outcome is
// lost (settleLost). When the relay ended with the upstream's stream
// still fine (the agent left, or stopped reading), the call runs on as a
// detached call does: the rest is read, within the route's idle timeout
// and deadline, and stored, so the agent's retry replays it. A stream
// Shutdown called off keeps its claim, as runGuarded does.
func (s *Server) settleStream(b *relayBody) {
	k := &b.keep
	defer k.drop()
	if !k.eof && k.body != nil && b.err == nil && !b.stopping.Load() {
		b.readRest()
	}
	switch {
	case k.eof && k.body != nil:
		sr := &store.Response{Status: k.status, Header: k.header, Body: k.body.B}
		s.settle(b.r, k.claim, sr, k.ttl) // copies the body: the buffer goes back to its pool
	case k.body == nil:
		b.r.m.idem[idemTooLarge].Inc()
		if b.trail != nil {
			b.trail.idem = idemResults[idemTooLarge] // its line says so, as a buffered answer's does
		}
		s.settle(b.r, k.claim, nil, k.ttl)
	case b.stopping.Load():
		// Shutdown called it off: the call ran, and the claim stays.
	default: // the upstream broke off, or timed out
		s.settleLost(b.r, k.claim, k.ttl)
	}
}

// readRest reads the rest of a keyed stream into its record (settleStream),
// up to its room, with the relay's reads: bounded by the route's idle
// timeout and deadline, and called off by Shutdown. The record's eof
// then says whether the upstream ended it whole.
func (b *relayBody) readRest() {
	k := &b.keep
	for k.body != nil {
		buf := k.body
		buf.B = growWithin(buf.B, 1, k.room+1) // one byte past room tells a body too large
		free := buf.B[len(buf.B):cap(buf.B)]
		free = free[:min(int64(len(free)), k.room+1-int64(len(buf.B)))]
		n, err := b.stream.Read(free)
		if b.settle && n > 0 {
			b.window.add(free[:n]) // the tokens the upstream spent
		}
		if int64(len(buf.B)+n) > k.room {
			k.drop()
			return
		}
		buf.B = buf.B[:len(buf.B)+n]
		if err != nil {
			k.eof = err == io.EOF
			b.ended = k.eof
			return
		}
	}
}

// settleLost ends the claim rec of a call that may have run upstream but
// whose answer the agent did not get: duplicates then read
// outcome_unknown (lostOutcome). On a route whose calls are declared
// idempotent (idempotency.idempotent) a repeat is harmless, and the key
// is freed instead.
func (s *Server) settleLost(r *route, rec *store.Record, ttl time.Duration) {
	if r.idem.idempotent {
		s.settle(r, rec, nil, ttl)
		return
	}
	sr := lostOutcome
	sr.Header = bytes.Clone(sr.Header)
	s.settle(r, rec, &sr, ttl)
}

// settle records the outcome of the claim rec: the response sr, or, when
// sr is nil, none (the key is freed). A local store does it at once: it
// never waits on a network (the file store commits after the answer
// anyway). A networked store's round trip, bounded by op_timeout, may not
// hold the answer back past the request's deadline: it is made in the
// background once the agent has its answer, with a deadline of its own
// (Shutdown waits for it). Until it lands, a duplicate attaches to the
// claim and gets the answer once recorded; a record that cannot be made
// leaves the claim to end with its lease, never an answer it did not get.
func (s *Server) settle(r *route, rec *store.Record, sr *store.Response, ttl time.Duration) {
	now := s.clock.Now()
	if s.stateLocal {
		s.finishClaim(context.Background(), r, rec, sr, now, ttl) // a local store does not wait on it
		return
	}
	if sr != nil {
		// The response's body is reused once the handler returns.
		sr.Body = bytes.Clone(sr.Body)
	}
	s.settling.Add(1)
	go func() {
		defer s.settling.Done()
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.finishClaim(c, r, rec, sr, now, ttl)
	}()
}

// finishClaim completes the claim rec with sr, or releases it when sr is nil.
// A response the store refuses as too large is passed through unstored and
// frees the key. Any other failure to record it (Redis did not answer, or
// lost the claim) keeps the claim until its lease ends: the call ran, and
// a released key would let the agent's retry run it again.
func (s *Server) finishClaim(c context.Context, r *route, rec *store.Record, sr *store.Response, now time.Time, ttl time.Duration) {
	if sr == nil {
		_ = s.state.Release(c, rec)
		return
	}
	if err := s.state.Complete(c, rec, sr, now, ttl); err != nil {
		s.log.Warn("idempotency record not stored", "route", r.name, "error", err.Error())
		if errors.Is(err, store.ErrTooLarge) {
			_ = s.state.Release(c, rec)
		}
	}
}

// bufferGuarded reads the streamed body of a keyed answer whole when it
// fits the store's max_response_bytes, so that it can be stored; a larger
// one stays a stream (its first bytes read ahead). It reports false when
// the upstream broke off its body meanwhile: the agent then gets 502
// rather than a truncated answer presented as whole, and the caller
// records the outcome as lost (settleLost). The read ahead is in Server.live like a stream: when Shutdown's
// drain runs out of time it is called off, and the agent gets 503
// shutting_down (its trail's stop says so).
func (s *Server) bufferGuarded(ctx *fasthttp.RequestCtx, r *route) bool {
	resp := &ctx.Response
	rb, ok := resp.BodyStream().(*relayBody)
	limit := s.maxStored
	if !ok || int64(resp.Header.ContentLength()) > limit {
		return true
	}
	s.live.add(rb)
	body, whole, err := rb.prefetch(limit)
	s.live.remove(rb)
	switch {
	case err != nil && rb.stopping.Load():
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown, Route: r.name,
			Detail: "ballast is shutting down, and its drain ran out of time while the upstream's answer was being read; the call ran, its answer is lost"})
		if tr := trailOf(ctx); tr != nil {
			tr.stop = ReasonShuttingDown
		}
		return false
	case err != nil:
		writeProblem(ctx, problem{Status: fasthttp.StatusBadGateway, Reason: ReasonUpstreamUnavailable, Route: r.name,
			Detail: "the upstream's answer broke off after " + strconv.Itoa(len(body)) + " bytes: " + agentErrorText(err)})
		return false
	case whole:
		resp.SetBodyRaw(body) // closes the stream, read to its end
	}
	return true
}

// replay answers with a stored response.
func replay(ctx *fasthttp.RequestCtx, sr *store.Response) {
	var idBuf [maxRequestIDLen]byte
	id := idBuf[:copy(idBuf[:], ctx.Response.Header.Peek(headerRequestID))]
	resp := &ctx.Response
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	resp.SetStatusCode(sr.Status)
	eachHeaderLine(sr.Header, func(k, v []byte) {
		if asciiEqualFold(k, []byte("Cache-Status")) {
			// ballast's member told of the first exchange, not this replay.
			if v = withoutCacheMember(v, "ballast"); len(v) == 0 {
				return
			}
		}
		resp.Header.AddBytesKV(k, v)
	})
	resp.Header.SetBytesV(headerRequestID, id)
	// Set replaces one line only: the upstream's other lines of a header
	// ballast sets would stand beside ballast's, and an SDK that joins
	// them ("true, false") reads neither.
	resp.Header.Del(headerReplayed)
	resp.Header.Set(headerReplayed, "true")
	resp.Header.Set(headerAttempts, "0")
	if st := sr.Status; st == fasthttp.StatusRequestTimeout || st == fasthttp.StatusConflict || st >= 500 {
		// The key replays this answer until its ttl ends: the OpenAI and
		// Anthropic SDKs, which retry these statuses (whatever the
		// upstream's own x-should-retry said), would read it again.
		resp.Header.Del(headerShouldRetry)
		resp.Header.Set(headerShouldRetry, "false")
	}
	resp.SetBodyRaw(sr.Body)
}

// stateUnavailable answers 503 state_unavailable for err, a failure of
// the state store or of a shared (Redis) limit. The agent is told which
// kind of failure it was (stateDetail), never err's text, which may name
// the Redis address, the state file's path or another agent's key; the
// log keeps err whole.
//
// A failure of the store itself, rather than of this one request (too
// large, out of time) or of a store closing for shutdown, also raises a
// state_failing alert: every keyed request of the route is refused the
// same way until it mends.
func (s *Server) stateUnavailable(ctx *fasthttp.RequestCtx, r *route, err error) {
	s.stateUnavailableOn(ctx, r.name, err)
}

// stateUnavailableOn is stateUnavailable for the route named route ("":
// a request of no route, such as a job's poll).
func (s *Server) stateUnavailableOn(ctx *fasthttp.RequestCtx, route string, err error) {
	s.log.Error("state store failed", "route", route, "error", err.Error())
	detail := stateDetail(err)
	writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonStateUnavailable, Route: route,
		RetryAfter: time.Second, Detail: detail})
	switch {
	case errors.Is(err, store.ErrTooLarge), errors.Is(err, context.DeadlineExceeded), errors.Is(err, store.ErrClosed):
	default:
		s.alert(supervise.KindStateFailing, route, "", detail)
	}
}

// stateDetail is what an agent reads of a state failure: its kind, in
// ballast's own words.
func stateDetail(err error) string {
	const logged = " (ballast's log has the cause)"
	switch {
	case errors.Is(err, errHeldInRedis):
		return "the state store is unavailable: " + errHeldInRedis.Error()
	case errors.Is(err, errKnownDown):
		return "the state store is unavailable: " + errKnownDown.Error()
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, ratelimit.ErrUnavailable):
		return "the state store is unavailable: redis could not be reached or did not answer in time" + logged
	case errors.Is(err, store.ErrFull):
		return "the state store is unavailable: it is full (state.max_records) until records expire"
	case errors.Is(err, store.ErrTooLarge):
		return "the state store is unavailable for this request: it is larger than state.max_response_bytes"
	case errors.Is(err, context.DeadlineExceeded):
		return "the state store is unavailable: it did not answer within the request's deadline"
	case errors.Is(err, store.ErrClosed):
		return "the state store is unavailable: it is closed, ballast is shutting down"
	}
	return "the state store is unavailable: it failed" + logged
}

// idemResults are the result label values of ballast_idempotency_total.
var idemResults = [...]string{"claimed", "attached", "replayed", "conflict", "mismatch", "unknown_outcome", "too_large"}

const (
	idemClaimed = iota
	idemAttached
	idemReplayed
	idemConflict
	idemMismatch
	idemUnknown
	idemTooLarge
)

// noteIdem counts an idempotency outcome and puts it on the trail.
func (s *Server) noteIdem(ctx *fasthttp.RequestCtx, r *route, result int) {
	r.m.idem[result].Inc()
	if tr := trailOf(ctx); tr != nil {
		tr.idem = idemResults[result]
	}
}

// withoutCacheMember is a Cache-Status field value (RFC 9211: a list of
// members, one per cache, each an identifier with parameters) without the
// members of the cache named id. Commas inside quoted strings do not split.
func withoutCacheMember(v []byte, id string) []byte {
	var out []byte
	for m := range cache.Members(v) {
		name, _, _ := bytes.Cut(m, []byte(";"))
		if asciiEqualFold(bytes.TrimSpace(name), []byte(id)) {
			continue
		}
		if len(out) > 0 {
			out = append(out, ", "...)
		}
		out = append(out, m...)
	}
	return out
}
