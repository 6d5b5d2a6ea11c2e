package proxy

import (
	"bytes"
	"strconv"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

// attempt is the outcome of one upstream exchange.
type attempt struct {
	resp   *fasthttp.Response // nil on a transport error
	err    error
	class  policy.Class
	cause  policy.Cause
	status int
	// hint is the server's wait hint on a 429 or 503, at most the route's
	// retry.max_cooldown (noteHints); 0 when none.
	hint time.Duration
	// invalid is the validation failure that made the class invalid.
	invalid *validate.Failure
	// took is how long the attempt ran (wall time); ended is when it
	// ended, on the server's clock.
	took  time.Duration
	ended time.Time
	// clipped: the request's deadline left this attempt less than
	// timeouts.per_try, so a timeout says more of the deadline (an agent's
	// X-Ballast-Timeout, the end of the total) than of the upstream.
	clipped bool
	// hedged: a second copy of this attempt went out (tryHedged).
	hedged bool
	// resent: before this attempt's own exchange, a copy of it went out
	// whole on a pooled connection that closed unanswered (transport.do).
	resent bool
	// noStore: relay the answer, but keep it in no cache (a tool's
	// JSON-RPC error in a 200).
	noStore bool
	// short: the attempt failed because ballast itself ran out of a
	// resource before anything was sent (policy.ShortageOf). It is no
	// attempt at the upstream: see exchangeUpstream.
	short policy.Shortage
}

// failure is the error that failed a: its transport error, or its
// validation failure; nil when neither did (its status says why).
func (a *attempt) failure() error {
	if a.err == nil && a.invalid != nil {
		return a.invalid
	}
	return a.err
}

// exchangeUpstream runs the route's retry policy: attempts on the primary, then on
// each fallback, inside the request's total deadline, and answers the
// agent. It is the one place retries are decided.
//
// The deadline is law: no wait starts that would end after it. When the
// next wait cannot fit, ballast answers at once — with the upstream's hint
// as Retry-After — instead of sleeping past the agent's deadline.
func (s *Server) exchangeUpstream(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, cs *cacheState, guarded bool) {
	out := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(out)
	method := ctx.Method()
	tr := trailOf(ctx)
	if !guarded && r.jsonrpc != nil && len(body) > 0 {
		guarded = r.jsonrpc.safe(body) // a read-only JSON-RPC call is safe to repeat
	}
	// A retry for an agent that has closed its connection would call the
	// upstream (and pay for a model call) for nobody, and so would the
	// rest of an attempt (agentWatch); a detached call runs on, since the
	// agent's retry attaches to it. A detached call is registered all the
	// same, without a connection to watch, and so is one whose agent's
	// connection cannot be peeked at: Shutdown calls every call off when
	// its drain runs out of time (agentWatch.halt).
	detached := tr == nil || tr.detached
	var watch *watchedCall
	if detached {
		watch = s.agents.add(nil, time.Now())
	} else {
		watch = s.agents.add(agentConn(ctx), tr.start)
	}
	if tr != nil {
		tr.watch = watch
	}
	defer func() {
		if tr != nil {
			tr.watch = nil
		}
		s.agents.remove(watch)
	}()

	var (
		last      attempt
		lastT     *target
		attempts  int
		stop      Reason // why the loop gave up early, when it did
		stopAfter time.Duration
		limitStop bool // stop is the route's rate limit refusing a retry
		// hinted: the status (429, 503) of the answer whose pause stopped
		// the loop (stop rate_limited), whichever upstream answered last.
		hinted int
		// paidOn is the target whose retry budget paid, at paidAt, for a
		// retry not sent yet; nil when none. A retry that is not sent
		// after all (an open breaker, a cool-down or the rate limit stops
		// it, the deadline passes, the agent leaves, ballast shuts down
		// during the wait) gets it back: the budget pays only for what
		// reaches the upstream.
		paidOn *target
		paidAt time.Time
	)
	defer func() {
		// Every way out refunds, the returns of a wait that Shutdown
		// ended (the pause answered 503 itself) included.
		refundRetry(&paidOn, paidAt)
		if last.resp != nil {
			fasthttp.ReleaseResponse(last.resp)
		}
	}()

	var key uint64
	var tokens ratelimit.Reservation
	if r.limit != nil {
		key = r.limit.key.of(ctx, body)
		if r.limit.tokens != nil {
			var ok bool
			if tokens, ok = s.reserveTokens(ctx, r, key, body, deadline); !ok {
				return
			}
			defer s.settleTokens(ctx, &tokens, &attempts, &last)
		}
	}

	// An MCP session lives on the upstream that issued it: another one
	// would answer 404 session not found, so a request in a session never
	// fails over.
	sessionBound := len(r.targets) > 1 && len(ctx.Request.Header.Peek("Mcp-Session-Id")) > 0

targets:
	for ti, t := range r.targets {
		refundRetry(&paidOn, paidAt)
		if ti > 0 && sessionBound {
			break
		}
		if ti > 0 {
			out.Reset()
		}
		buildOutbound(out, ctx, r, t, body)
		for n := 0; n < r.attempts; n++ {
			now := s.clock.Now()
			if attempts > 0 && !detached && agentGone(ctx) {
				stop, stopAfter = ReasonAgentGone, 0
				break targets
			}
			if !now.Before(deadline) {
				// Nothing can be sent any more (an agent's X-Ballast-Timeout
				// may run out before the first attempt), and what is not
				// sent is not an attempt: it says nothing of the upstream,
				// so it takes no breaker probe and counts in neither the
				// breaker, the retry budget nor the upstream's status. The
				// agent gets the last attempt's outcome, or 504 timeout
				// when there was none.
				if attempts == 0 {
					last, lastT = attempt{err: fasthttp.ErrTimeout, class: policy.Timeout, cause: policy.CauseTimeout, ended: now}, t
				}
				break targets
			}
			ok, probe, retryIn := t.health.breaker.Allow(now)
			if !ok {
				if stop == "" || stop == ReasonBreakerOpen {
					stop, stopAfter = ReasonBreakerOpen, minPositive(stopAfter, retryIn)
				}
				continue targets
			}
			if n == 0 {
				t.health.budget.Deposit(now) // a retry paid when it was decided, below
			}
			// The shared cool-down: the provider asked every request with
			// this key to wait. A pause that ends at the deadline leaves
			// nothing to send in.
			if wait := t.up.cool.Remaining(&out.Header, now); wait > 0 {
				if !now.Add(wait).Before(deadline) {
					t.health.breaker.Release(probe)
					stop, stopAfter, hinted = ReasonRateLimited, wait, fasthttp.StatusTooManyRequests
					continue targets
				}
				r.m.retryWait.Observe(wait.Seconds())
				tr.waiting(wait, "cooldown")
				if end := s.pauseWatched(ctx, wait, watch); end != waited {
					t.health.breaker.Release(probe)
					if end == waitAgentLeft {
						stop, stopAfter = watch.why(), 0
						break targets
					}
					return
				}
				now = s.clock.Now()
			}

			if ok, refused := s.admit(ctx, r, key, now, deadline); !ok {
				t.health.breaker.Release(probe)
				if refused == nil {
					return // shutting down; sleep answered
				}
				if attempts == 0 {
					writeRateLimited(ctx, r, refused, 0, "the route's rate limit ("+r.limit.name+") has no room within this request's deadline or rate_limit.max_wait")
					s.observe(ctx, r, policy.RateLimited, ReasonRateLimited)
					return
				}
				stop, stopAfter, limitStop, hinted = ReasonRateLimited, refused.RetryAfter, true, 0
				break targets
			}
			var a attempt
			if r.hedgeAfter > 0 && (guarded || policy.IdempotentMethod(method)) && s.clock.Now().Add(r.hedgeAfter).Before(deadline) {
				a = s.tryHedged(out, t, r, key, deadline, attempts, watch)
			} else {
				a = s.tryObserved(out, t, r, deadline, attempts, watch.attemptCancel())
			}
			if a.short != policy.ShortageNone {
				// ballast itself is out of descriptors, ports or pooled
				// connections: nothing was sent, so this is no attempt
				// at the upstream, whose breaker, retry budget (a retry
				// paid for is given back) and attempts hear nothing of it.
				// A retry now would meet the same shortage; the next
				// upstream, with its own pool (or an idle connection in
				// it), may not. With nothing sent anywhere the agent gets
				// 503 overloaded (answer).
				t.health.breaker.Release(probe)
				refundRetry(&paidOn, paidAt)
				s.noteShortage(r, t, a.short, a.err)
				if attempts == 0 {
					last = a
				}
				if stop == "" || stop == ReasonBreakerOpen {
					stop, stopAfter = ReasonOverloaded, 0
				}
				continue targets
			}
			if paidOn != nil { // the retry went out: paid for, and made
				r.m.retries[last.class].Inc()
				paidOn = nil
			}
			if a.resent {
				// That copy reached the upstream too: an attempt, and a
				// retry, of its own (a closed connection: transient).
				tr.attempt(t.name, policy.Transient, 0, 0)
				t.attempts[policy.Transient].Inc()
				r.m.retries[policy.Transient].Inc()
				r.m.retryWait.Observe(0)
				attempts++
			}
			if a.err != nil && watch.hungUp() {
				// The agent hung up while the upstream worked: the attempt
				// was called off, which says nothing of the upstream.
				t.health.breaker.Release(probe)
				a.class, a.cause = policy.Canceled, policy.CauseNone
				tr.attempt(t.name, a.class, 0, a.took)
				attempts++
				t.attempts[a.class].Inc()
				if last.resp != nil {
					fasthttp.ReleaseResponse(last.resp)
				}
				last, lastT = a, t
				stop, stopAfter = watch.why(), 0
				break targets
			}
			tr.attempt(t.name, a.class, a.status, a.took)
			if a.hedged {
				tr.hedged()
			}
			// An answer that failed validation ran, unless it says it failed
			// (a provider's error envelope, as a 5xx would: it frees the key).
			ranInvalid := a.cause == policy.CauseInvalid && (a.invalid == nil || a.invalid.Check != validate.CheckProviderError)
			if tr != nil && (a.resent || a.cause == policy.CauseReset || a.cause == policy.CauseTimeout || ranInvalid) {
				tr.mayHaveRun = true
			}
			if r.limit != nil && r.limit.adaptive != nil {
				if a.status == fasthttp.StatusTooManyRequests {
					r.limit.adaptive.OnThrottle(a.ended)
				} else if a.class == policy.OK {
					r.limit.adaptive.OnSuccess(a.ended)
				}
			}
			attempts++
			t.attempts[a.class].Inc()
			if a.class == policy.Timeout && a.clipped {
				t.health.breaker.Release(probe) // not the upstream's fault, nor proof of health
			} else {
				t.health.breaker.Record(a.ended, !upstreamFault(a.class), probe)
			}
			if last.resp != nil {
				fasthttp.ReleaseResponse(last.resp)
			}
			last, lastT = a, t
			if a.class == policy.OK {
				stop, stopAfter = "", 0 // an earlier upstream's refusal is moot
				break targets
			}
			if d := r.retry.Decide(a.class, a.cause, a.status, method, guarded); d != policy.DecisionRetry {
				if !degradable(a.class) {
					// The final answer is about the request (a 401, a 404):
					// the agent gets it as sent, whatever stopped an earlier
					// upstream.
					stop, stopAfter = "", 0
				}
				break targets // final: the agent gets this outcome
			}
			if n+1 >= r.attempts {
				continue targets // spent here; the next fallback may do better
			}
			if a.err != nil && policy.Deterministic(a.err) {
				// A certificate this upstream presents, which the next
				// handshake would present again: the next fallback may
				// have a good one.
				continue targets
			}
			if a.hint > r.maxRetryAfter { // 0: no hint is waited for
				// Coming back within the cap would be refused again.
				stop, stopAfter, hinted = ReasonRateLimited, a.hint, a.status
				continue targets
			}
			if !detached && agentGone(ctx) {
				stop, stopAfter = ReasonAgentGone, 0 // before waiting for a retry nobody will read
				break targets
			}
			// The wait must end before the deadline, with time left to
			// send the retry in.
			wait := policy.Wait(r.backoff.Delay(n, nil), a.hint, r.maxRetryAfter)
			now = s.clock.Now()
			if !now.Add(wait).Before(deadline) {
				if a.hint > 0 {
					stop, stopAfter, hinted = ReasonRateLimited, a.hint, a.status
				}
				continue targets
			} else if !t.health.budget.Withdraw(now) {
				// Paid now, before the wait: an agent whose retry the
				// budget refuses is answered at once, not after sitting
				// out a wait that could only end in this refusal.
				r.m.budgetExhausted.Inc()
				stop = ReasonBudgetExhausted
				break targets
			}
			paidOn, paidAt = t, now // counted in retries once it goes out
			r.m.retryWait.Observe(wait.Seconds())
			if a.hint > 0 && wait >= a.hint {
				tr.waiting(wait, "server hint")
			} else {
				tr.waiting(wait, "backoff")
			}
			if end := s.pauseWatched(ctx, wait, watch); end != waited {
				if end == waitAgentLeft {
					stop, stopAfter = watch.why(), 0
					break targets
				}
				return
			}
		}
	}

	if tr != nil {
		tr.stop = stop
	}
	s.answer(ctx, r, lastT, &last, attempts, stop, stopAfter, limitStop, hinted, deadline, cs)
	if attempts > 1 && ctx.Response.StatusCode() >= 500 && len(ctx.Response.Header.Peek("Retry-After")) == 0 && stop != ReasonShuttingDown {
		// ballast has retried already: an SDK that retried this too would
		// multiply the attempts (3 of its tries × 3 of ours). The OpenAI
		// and Anthropic SDKs obey this header over the status; an answer
		// with Retry-After is left to be waited out and retried, and so is
		// shutting_down, which is about ballast going away, not the
		// upstream: it is to be sent again (errors.md). Every line of the
		// upstream's goes (Set replaces one), or an SDK reads them joined.
		ctx.Response.Header.Del(headerShouldRetry)
		ctx.Response.Header.Set(headerShouldRetry, "false")
	}
	s.observeExchange(ctx, r, lastT, &last, attempts, stop)
}

// try sends one attempt to t and classifies it. cancel, when not nil, can
// call it off (see tryHedged).
func (s *Server) try(out *fasthttp.Request, t *target, r *route, now, deadline time.Time, cancel *tryCancel) attempt {
	tryDeadline := now.Add(r.perTry)
	clipped := deadline.Before(tryDeadline)
	if clipped {
		tryDeadline = deadline
	}
	tryDeadline = s.wall(tryDeadline)
	resp := fasthttp.AcquireResponse()
	resent, err := t.up.ex.do(out, resp, tryDeadline, cancel)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		cls, cause := policy.ClassifyError(err)
		a := attempt{err: err, class: cls, cause: cause, clipped: clipped, resent: resent}
		if !resent {
			// A copy that went out on a pooled connection before the
			// shortage makes this an attempt at the upstream after all.
			a.short = policy.ShortageOf(err)
		}
		return a
	}
	a := attempt{resp: resp, status: resp.StatusCode(), resent: resent}
	var body []byte
	if !resp.IsBodyStream() {
		body = resp.Body()
	}
	if a.status >= 400 && len(body) > 0 && len(resp.Header.ContentEncoding()) > 0 {
		// A compressed error body (the agent's SDK asked for gzip) is
		// classified by what it says: insufficient_quota, a bad key.
		buf := bytebufferpool.Get()
		if plain, ok := decodedPrefix(resp.Header.ContentEncoding(), body, policy.BodyScanLimit, buf); ok {
			a.class = policy.ClassifyResponse(a.status, nil, plain)
		} else {
			a.class = policy.ClassifyResponse(a.status, &resp.Header, body)
		}
		bytebufferpool.Put(buf)
	} else {
		a.class = policy.ClassifyResponse(a.status, &resp.Header, body)
	}
	if a.class != policy.OK {
		a.cause = policy.CauseStatus
	} else if r.validator != nil {
		s.check(r, &a)
	}
	return a
}

// noteHints reads the server's timing hints from a's response, which
// arrived at at: the wait a 429 or 503 asks for (a.hint), and the pauses
// of out's key — after a 429, or when a limit says nothing is left. A hint
// counts from the response's arrival (RFC 9110 §10.2.3), not from the
// attempt's start: a 429 that took 10s to come asking for 30s pauses the
// key for 30s from then. No pause lasts longer than r's
// retry.max_cooldown, and a.hint, a 429's or a 503's, is cut to it too:
// it is what the retry waits for and what the agent hears of (its
// Retry-After), so a Retry-After of a year is a max_cooldown, whichever
// of the two statuses it came with.
func (s *Server) noteHints(a *attempt, out *fasthttp.Request, t *target, r *route, at time.Time) {
	if a.resp == nil {
		return
	}
	h := &a.resp.Header
	if a.status == fasthttp.StatusTooManyRequests || a.status == fasthttp.StatusServiceUnavailable {
		if hint, ok := policy.RetryAfterHint(h, at); ok {
			if a.status == fasthttp.StatusTooManyRequests {
				// Everyone with this key waits, not just this request.
				s.extendCooldown(t, credentialOf(&out.Header), at.Add(hint), at, r.maxCooldown)
			}
			a.hint = min(hint, r.maxCooldown)
		}
	}
	if until, ok := policy.ResetWhenExhausted(h, at); ok {
		s.extendCooldown(t, credentialOf(&out.Header), until, at, r.maxCooldown) // throttle ahead of the 429
	}
}

// answer gives the agent the outcome of the exchange. limitStop says the
// stop was the route's own rate limit refusing a retry, not the upstream;
// hinted, when not 0, is the status of the answer whose pause stopped it:
// the agent hears of a 503's pause as a 503 even when a fallback failed
// after it.
func (s *Server) answer(ctx *fasthttp.RequestCtx, r *route, t *target, last *attempt, attempts int, stop Reason, stopAfter time.Duration, limitStop bool, hinted int, deadline time.Time, cs *cacheState) {
	deadline = s.wall(deadline)
	if last.class == policy.OK && last.resp != nil {
		if !last.noStore {
			s.store(r, cs, last.resp, last.ended)
		}
		s.relay(ctx, r, t, last.resp, deadline, attempts)
		last.resp = nil // the relay owns it now
		if cs != nil && cs.use {
			addCacheStatus(ctx, cs.status)
		}
		return
	}
	if stop == ReasonAgentGone {
		// Nobody reads this answer; it is written for the log and the
		// metrics, with nginx's 499 for a request its client abandoned.
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: statusAgentGone, Title: "Client Closed Request", Reason: ReasonAgentGone,
			Route: r.name, Attempts: attempts, Detail: "the agent closed its connection; ballast stopped retrying"})
		return
	}
	if stop == ReasonShuttingDown {
		// Shutdown's drain ran out of time with the call still running
		// (agentWatch.halt): its outcome upstream is unknown.
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown, Route: r.name,
			Attempts: attempts, Detail: "ballast is shutting down, and its drain ran out of time before the upstream answered; the call may or may not have run"})
		return
	}
	// Degradation, in order: the retries and fallbacks are spent; now a
	// stored response, then the static fallback, then the error.
	if (stop != "" || last.err != nil || degradable(last.class)) && s.degrade(ctx, r, cs, last, attempts) {
		return
	}
	if last.invalid != nil && stop == "" {
		writeInvalid(ctx, r, t, last.invalid, attempts)
		if last.class != policy.Invalid {
			// A refused key or a spent quota (validate.Failure.Denial):
			// an SDK that retried this 502 would be refused again.
			ctx.Response.Header.Set(headerShouldRetry, "false")
		}
		return
	}
	lastWords := ""
	if last.resp != nil {
		lastWords = "; the last attempt got " + strconv.Itoa(last.status) + " from " + t.name
	} else if last.err != nil {
		// As writeTransportProblem words it: the network's addresses
		// stay out of what the agent reads.
		lastWords = "; the last attempt failed: " + agentErrorText(last.err)
	}
	switch stop {
	case ReasonBudgetExhausted:
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonBudgetExhausted, Route: r.name,
			Attempts: attempts, RetryAfter: time.Second,
			Detail: "the upstream's retry budget is spent: too many recent requests needed retries" + lastWords})
		return
	case ReasonRateLimited:
		pause := stopAfter.Round(time.Millisecond).String()
		tooMany := last.resp == nil || last.status == fasthttp.StatusTooManyRequests || attempts == 0
		if hinted != 0 {
			tooMany = hinted == fasthttp.StatusTooManyRequests
		}
		if tooMany {
			detail := "the upstream asked to pause for " + pause + ", longer than this request's deadline or retry.max_retry_after allows"
			if limitStop {
				detail = "the route's rate limit (" + r.limit.name + ") has no room for a retry within this request's deadline or rate_limit.max_wait; it has in " + pause
			}
			writeProblem(ctx, problem{Status: fasthttp.StatusTooManyRequests, Reason: ReasonRateLimited, Route: r.name,
				Attempts: attempts, RetryAfter: stopAfter, Detail: detail + lastWords})
			return
		}
		detail := "the upstream is unavailable and asked to come back in " + pause
		if limitStop {
			detail = "the upstream is unavailable, and the route's rate limit (" + r.limit.name + ") has no room for a retry for " + pause
		}
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonUpstreamUnavailable, Route: r.name,
			Attempts: attempts, RetryAfter: stopAfter, Detail: detail + lastWords})
		return
	case ReasonBreakerOpen:
		if attempts == 0 {
			writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonBreakerOpen, Route: r.name,
				RetryAfter: stopAfter, Detail: "every upstream of this route is failing; its circuit breaker is open"})
			return
		}
	case ReasonOverloaded:
		if attempts == 0 && last.short != policy.ShortageNone {
			// ballast's own shortage, not the upstream's failure: said
			// as such, and worth coming back for once it has passed.
			writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonOverloaded, Route: r.name,
				RetryAfter: time.Second, Detail: shortageText(last.short, last.err)})
			return
		}
	}
	if last.resp != nil {
		// The upstream's own answer, retries spent: agents and SDKs read
		// provider error bodies better than ours.
		s.relay(ctx, r, t, last.resp, deadline, attempts)
		last.resp = nil
		return
	}
	if last.err != nil {
		s.writeTransportProblem(ctx, r, t, last.err, attempts)
		return
	}
	writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonUpstreamUnavailable, Route: r.name,
		Attempts: attempts, Detail: "no upstream could be tried within the deadline"})
}

// wall turns a deadline on the server's clock into wall-clock time for
// socket deadlines: the time left, measured on the clock, from the real now.
// With the system clock it is the identity (and reads no clock); with a
// test clock it keeps I/O bounded by real time while decisions follow the
// test's time.
func (s *Server) wall(deadline time.Time) time.Time {
	if s.systemClock {
		return deadline
	}
	return time.Now().Add(deadline.Sub(s.clock.Now()))
}

// clockAt returns the server clock's now, given wall, a time.Now() reading
// taken an instant ago: with the system clock that reading is the answer,
// which spares the request path a clock read (each costs ~50-100 ns on a
// VM's clocksource, and a request used about fifteen).
func (s *Server) clockAt(wall time.Time) time.Time {
	if s.systemClock {
		return wall
	}
	return s.clock.Now()
}

// sleep waits d on the server's clock, before r's call is sent. It returns
// false, with the request answered, when the server is shutting down
// (503) or the agent hung up meanwhile (499, recorded like any outcome).
func (s *Server) sleep(ctx *fasthttp.RequestCtx, r *route, d time.Duration) bool {
	switch s.pause(ctx, d) {
	case waited:
		return true
	case waitAgentLeft:
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: statusAgentGone, Title: "Client Closed Request", Reason: ReasonAgentGone,
			Route: r.name, Detail: "the agent closed its connection while ballast waited to send its call"})
		if tr := trailOf(ctx); tr != nil {
			tr.stop = ReasonAgentGone
		}
		s.observe(ctx, r, policy.Canceled, ReasonAgentGone)
	}
	return false
}

// waitEnd is how a pause ended.
type waitEnd uint8

const (
	waited        waitEnd = iota // the whole wait
	waitShutdown                 // ballast is shutting down; pause answered 503
	waitAgentLeft                // the agent hung up (agentWatch); nothing answered
)

// pause waits d on the server's clock. It ends early when ballast shuts
// down, answering 503 itself, and when the agent of a watched call hangs
// up, leaving the answer to the caller.
func (s *Server) pause(ctx *fasthttp.RequestCtx, d time.Duration) waitEnd {
	var watch *watchedCall
	if tr := trailOf(ctx); tr != nil {
		watch = tr.watch
	}
	return s.pauseWatched(ctx, d, watch)
}

// pauseWatched is pause for the call watch (nil: none), which an async
// job, having no trail, passes itself. It also ends, as waitAgentLeft,
// when Shutdown calls the call off (see watchedCall.why).
func (s *Server) pauseWatched(ctx *fasthttp.RequestCtx, d time.Duration, watch *watchedCall) waitEnd {
	if watch.hungUp() {
		return waitAgentLeft
	}
	left := watch.leftC()
	// An agent's wait (its request has a trail) ends when Shutdown
	// begins, before fasthttp's own Shutdown closes ctx.Done (see conns);
	// an async job waits on until the drain runs out of time (halt).
	var shutdown <-chan struct{}
	if trailOf(ctx) != nil {
		shutdown = s.drain.Done()
	}
	t := s.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return waited
	case <-left:
		return waitAgentLeft
	case <-shutdown:
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown,
			Detail: "ballast is shutting down"})
		return waitShutdown
	}
}

// upstreamFault reports the classes that say the upstream itself is
// unhealthy, which is what the breaker counts. Rate limits have the
// cool-down; caller faults say nothing about the upstream.
func upstreamFault(c policy.Class) bool {
	return c == policy.Transient || c == policy.Timeout || c == policy.Invalid
}

// refundRetry gives back the retry budget *paidOn paid at paidAt for a
// retry that was not sent, and clears *paidOn.
func refundRetry(paidOn **target, paidAt time.Time) {
	if *paidOn != nil {
		(*paidOn).health.budget.Refund(paidAt)
		*paidOn = nil
	}
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// reserveTokens takes the request's estimated model tokens from the route's
// tokens_per_minute limit, waiting within max_wait and the deadline. It
// answers 429 itself and returns ok=false when there is no room.
func (s *Server) reserveTokens(ctx *fasthttp.RequestCtx, r *route, key uint64, body []byte, deadline time.Time) (ratelimit.Reservation, bool) {
	now := s.clock.Now()
	n := ratelimit.EstimateTokens(body)
	// Like admit's turn, the tokens must come before the deadline.
	res, err := reserve(r.limit.tokens, key, n, now, max(min(r.limit.maxWait, deadline.Sub(now)-time.Nanosecond), 0), deadline.Sub(now))
	if err != nil {
		le, ok := err.(*ratelimit.LimitedError)
		if !ok {
			s.stateUnavailable(ctx, r, err) // the shared limit is unreachable (fail_closed)
			return res, false
		}
		r.m.rateRejected[rejectTokens].Inc()
		writeRateLimited(ctx, r, le, 0, "the route's tokens_per_minute limit has no room for about "+
			strconv.Itoa(n)+" tokens within this request's deadline")
		s.observe(ctx, r, policy.RateLimited, ReasonRateLimited)
		return res, false
	}
	if d := res.DelayFrom(now); d > 0 {
		r.m.rateWait.Observe(d.Seconds())
		if !s.sleep(ctx, r, d) {
			res.Cancel(s.clock.Now())
			return res, false
		}
	}
	return res, true
}

// headerShouldRetry is the OpenAI and Anthropic SDKs' override of their
// own retry decision.
const headerShouldRetry = "x-should-retry"

// maxUsageBody bounds how much of a compressed answer is decoded to read
// its token usage.
const maxUsageBody = 1 << 20

// settleTokens replaces the token estimate with the response's usage: at
// once for a buffered answer, at the end of the stream for a streamed one.
// An answer without usage keeps the estimate, and so do answers whose
// usage is not this request's: a stored answer served because the
// upstream failed, and ballast's invalid_response (the model answered,
// and spent, but not validly). Any other answer ballast wrote itself
// (nothing reached the model, or nothing came back) gives the tokens
// back, and so does any answer when no attempt was sent (every breaker
// open: a stored or static answer served unasked). attempts and last are
// read when the exchange ends (the call is deferred); last is the last
// attempt sent, which a job's call (it keeps no trail) has too.
func (s *Server) settleTokens(ctx *fasthttp.RequestCtx, res *ratelimit.Reservation, attempts *int, last *attempt) {
	if rb, ok := ctx.Response.BodyStream().(*relayBody); ok {
		rb.tokens, rb.settle = *res, true
		return
	}
	if *attempts == 0 {
		res.Settle(0, s.clock.Now()) // nothing reached the model
		return
	}
	// Every line: ballast's member follows any the stored answer kept.
	for _, cs := range ctx.Response.Header.PeekAll("Cache-Status") {
		if bytes.Contains(cs, []byte("fwd=stale")) {
			return // a stored answer: its usage is another request's
		}
	}
	if string(ctx.Response.Header.ContentType()) == problemContentType {
		if last.class == policy.Invalid {
			return // the model answered: the estimate stands
		}
		res.Settle(0, s.clock.Now())
		return
	}
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	if body, ok := decodedPrefix(ctx.Response.Header.ContentEncoding(), ctx.Response.Body(), maxUsageBody, buf); ok {
		if u, ok := ratelimit.UsageFromBody(body); ok {
			res.Settle(u.Tokens(), s.clock.Now())
		}
	}
}

// tryHedged is one attempt that may race a second copy of itself: when no
// response headers came within the route's hedge_after (and the retry
// budget allows), a hedge goes out too. The first good answer wins, and
// the other copy is called off (its connection closed, see tryCancel)
// and dropped. It runs only for requests safe to repeat. A hedge pays the
// route's request limit like any attempt (key is the request's partition),
// but never waits for it: with no token at hand, no hedge goes out. Nor
// does one at or after the deadline: the caller hedges only when
// hedge_after ends before it, and the first copy otherwise runs alone,
// cut to the deadline like any attempt.
func (s *Server) tryHedged(out *fasthttp.Request, t *target, r *route, key uint64, deadline time.Time, prior int, watch *watchedCall) attempt {
	type result struct {
		a     attempt
		which int
	}
	results := make(chan result, 2)
	var cancels [2]tryCancel
	launch := func(which int) {
		req := fasthttp.AcquireRequest()
		out.CopyTo(req)
		go func() {
			defer fasthttp.ReleaseRequest(req)
			results <- result{s.tryObserved(req, t, r, deadline, prior, &cancels[which]), which}
		}()
	}
	launch(0)
	timer := s.clock.NewTimer(r.hedgeAfter)
	defer timer.Stop()
	inFlight := 1
	// The agent hanging up (agentWatch) calls every copy off.
	callOff := func() attempt {
		for i := range cancels {
			cancels[i].cancel() // a finished or unlaunched copy's cancel is harmless
		}
		for range inFlight {
			releaseAttempt((<-results).a)
		}
		return attempt{err: errTryCanceled, class: policy.Canceled}
	}
	left := watch.leftC()
	var first result
	select {
	case first = <-results:
		return first.a
	case <-left:
		return callOff()
	case <-timer.C():
		// A hedge needs time left to be sent in (the timer may fire late),
		// and pays both the retry budget and the rate limit, or neither.
		if now := s.clock.Now(); now.Before(deadline) && t.health.budget.Withdraw(now) {
			if s.admitHedge(r, key, now, deadline) {
				r.m.hedges.Inc()
				launch(1)
				inFlight++
			} else {
				t.health.budget.Refund(now)
			}
		}
	}
	select {
	case first = <-results:
	case <-left:
		return callOff()
	}
	hedged := inFlight == 2
	inFlight--
	if first.a.class == policy.OK || inFlight == 0 {
		if inFlight > 0 {
			cancels[1-first.which].cancel()
			go func() { releaseAttempt((<-results).a) }()
		}
		first.a.hedged = hedged
		return first.a
	}
	var second result
	select {
	case second = <-results:
	case <-left:
		releaseAttempt(first.a)
		return callOff()
	}
	if second.a.class == policy.OK {
		releaseAttempt(first.a)
		second.a.hedged = true
		return second.a
	}
	releaseAttempt(second.a)
	first.a.hedged = true
	return first.a
}

func releaseAttempt(a attempt) {
	if a.resp != nil {
		fasthttp.ReleaseResponse(a.resp)
	}
}
