package proxy

import (
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/valyala/fasthttp"
)

// tryObserved is try, recorded on the route's upstream for /status: the
// attempt is in flight while it runs, then counted with its latency and
// outcome; prior is the number of attempts this request made before (any
// > 0 makes this one a retry). An attempt called off through cancel (a
// hedge's loser) is not counted: the upstream did not fail it; nor is one
// that ballast could not send for want of a local resource (a.short),
// though it is kept as the upstream's last failure: it is what stops
// traffic to it. A failed attempt is kept as the upstream's last failure
// too (supervise.Upstream.NoteFault: a copy, worded only when /status is
// read); a successful one costs nothing more. When the attempt left the
// upstream cooling down for longer than notify.cooldown_threshold, an
// alert is raised. Allocation-free unless it alerts.
//
// It sets a.took (wall time: latency is measured, not decided) and a.ended
// (the server's clock), reading the clock twice in all.
func (s *Server) tryObserved(out *fasthttp.Request, t *target, r *route, deadline time.Time, prior int, cancel *tryCancel) attempt {
	u := s.status.board.Route(r.name).Upstream(t.name)
	u.Begin()
	start := time.Now()
	a := s.try(out, t, r, s.clockAt(start), deadline, cancel)
	end := time.Now()
	a.took = end.Sub(start)
	u.End()
	at := s.clockAt(end)
	a.ended = at
	if a.err == errTryCanceled {
		return a // called off: the upstream's window hears nothing of it
	}
	if a.short != policy.ShortageNone {
		// Never sent for want of a local resource: the upstream's window
		// hears nothing of it, but its last failure says what blocks it
		// (classed as the failure list classes the 503 overloaded).
		u.NoteFault(&supervise.Fault{Time: at, Class: policy.RateLimited, Err: a.err, Short: a.short})
		return a
	}
	s.noteHints(&a, out, t, r, at)
	retries := 0
	if prior > 0 {
		retries = 1
	}
	if a.resent { // a first copy went out on a pooled connection that closed unanswered
		u.Record(at, supervise.Sample{Failed: true, Retries: retries})
		retries = 1
	}
	failed := supervise.CountsAsFailure(a.class)
	u.Record(at, supervise.Sample{Latency: a.took, Failed: failed, Retries: retries})
	if failed {
		u.NoteFault(&supervise.Fault{Time: at, Class: a.class, Cause: a.cause, Status: a.status, Err: a.failure()})
	}
	if rem := t.up.cool.Remaining(&out.Header, at); rem > 0 && rem > s.Config().Notify.CooldownThreshold.D() && u.NoteCooldown(at.Add(rem)) {
		s.alert(supervise.KindCooldown, r.name, t.name, "the upstream asked to pause for "+rem.Round(time.Second).String())
	}
	return a
}

// observeExchange records the outcome of an exchange once the agent's
// answer is written: the route's window, the failure ring when it failed,
// and alerts for a breaker that opened or a spent retry budget. t is the
// last target tried (nil when none was); stop is why the retry loop gave
// up early, if it did. Allocation-free unless it alerts.
func (s *Server) observeExchange(ctx *fasthttp.RequestCtx, r *route, t *target, last *attempt, attempts int, stop Reason) {
	upstream, cause := "", policy.CauseNone
	if t != nil {
		upstream = t.name
	}
	var why supervise.Fault // the last attempt's error, or ballast's shortage, for the failure list
	if attempts > 0 {
		cause = last.cause
		why.Err = last.failure()
	} else if last.short != policy.ShortageNone {
		why.Err, why.Short = last.err, last.short
	}
	now := s.record(ctx, r, upstream, outcomeClass(last.class, attempts, stop), cause, failureReason(last, stop), attempts, &why)
	rb := s.status.board.Route(r.name)
	for _, tg := range r.targets {
		if b := tg.health.breaker; b != nil {
			st := b.State(now)
			rb.Upstream(tg.name).NoteBreaker(st) // the route's own view, for /status
			if tg.health.opened(st) {
				s.alert(supervise.KindBreakerOpen, r.name, tg.name, "too many consecutive failures; requests fail fast until it probes again")
			}
		}
	}
	if stop == ReasonBudgetExhausted {
		s.alert(supervise.KindBudgetExhausted, r.name, upstream, "retries refused: too many recent requests needed them")
	}
}

// observe records a request the route answered without an exchange — a
// fresh cache hit (class policy.OK), or a refusal before any attempt such
// as the rate limit's (its class, and the problem reason it answered). Call
// it once, after the answer is written. Allocation-free.
func (s *Server) observe(ctx *fasthttp.RequestCtx, r *route, class policy.Class, reason Reason) {
	s.record(ctx, r, "", class, policy.CauseNone, reason, 0, nil)
}

// record adds one answered request to the route's window and, when it
// failed, to the failure ring, with why's Err and Short (nil: none) kept
// for the ring to word when /status is read. It returns the clock's now.
func (s *Server) record(ctx *fasthttp.RequestCtx, r *route, upstream string, class policy.Class, cause policy.Cause, reason Reason, attempts int, why *supervise.Fault) time.Time {
	wall := time.Now()
	now := s.clockAt(wall)
	if tr := trailOf(ctx); tr != nil {
		tr.recorded, tr.recordedAt, tr.recordedClass = true, now, class
	}
	s.status.board.Route(r.name).Record(now, supervise.Sample{
		Latency: wall.Sub(ctx.Time()), Failed: supervise.CountsAsFailure(class), Retries: max(attempts-1, 0),
	})
	if class == policy.OK || class == policy.Canceled {
		return now
	}
	id := ctx.Response.Header.Peek(headerRequestIDBallast) // ours, when the upstream sent its own id
	if len(id) == 0 {
		id = ctx.Response.Header.Peek(headerRequestID)
	}
	rec := supervise.FailureRecord{
		Time: now, Route: r.name, Upstream: upstream, Status: ctx.Response.StatusCode(),
		Class: class, Cause: cause, Reason: string(reason), Attempts: attempts, RequestID: id,
	}
	if why != nil {
		rec.Err, rec.Short = why.Err, why.Short
	}
	s.status.board.Failures().Record(&rec)
	return now
}

// noteCut records a stream the upstream broke off after its headers went
// out (the agent saw it truncated) as the failure it was: the request,
// counted as answered in the route's window when its headers were ready,
// becomes a failure there and in the window of the upstream that cut it
// (whose attempt was counted when the headers came: the same second, but
// for a request that straddled one), and joins the failure list. A
// request recorded as failed already (a 5xx relayed as a stream) is
// neither counted nor listed twice. Allocation-free.
func (s *Server) noteCut(r *route, t *target, tr *trail, err error, id []byte) {
	if supervise.CountsAsFailure(tr.recordedClass) {
		return // failed in the window, and listed, when recorded
	}
	rb := s.status.board.Route(r.name)
	rb.Fail(tr.recordedAt)
	rb.Upstream(t.name).Fail(tr.recordedAt)
	if tr.recordedClass != policy.OK && tr.recordedClass != policy.Canceled {
		return // listed when recorded (a 4xx): the window counts it failed now
	}
	class, cause := policy.ClassifyError(err)
	if class == policy.OK || class == policy.Canceled {
		class, cause = policy.Transient, policy.CauseReset
	}
	s.status.board.Failures().Record(&supervise.FailureRecord{
		Time: s.clock.Now(), Route: r.name, Upstream: t.name, Status: tr.status,
		Class: class, Cause: cause, Reason: string(reasonStreamTruncated), Attempts: tr.n, RequestID: id,
	})
}

// outcomeClass is the class of what the agent got: the last attempt's, or
// when nothing was tried, the reason the loop stopped.
func outcomeClass(last policy.Class, attempts int, stop Reason) policy.Class {
	if stop == ReasonAgentGone {
		return policy.Canceled
	}
	if attempts > 0 {
		return last
	}
	switch stop {
	case ReasonBreakerOpen:
		return policy.BreakerOpen
	case ReasonBudgetExhausted:
		return policy.BudgetExhausted
	case ReasonRateLimited, ReasonOverloaded:
		// overloaded: ballast's own shortage (see exchangeUpstream),
		// classed as the concurrency limit's refusal is (acquireSlot).
		return policy.RateLimited
	}
	return policy.Transient
}

// failureReason is the word the failure list shows: why the retry loop
// stopped, or the problem reason ballast answered a failed attempt with.
// Empty when the agent got the upstream's own answer (the class says it).
func failureReason(last *attempt, stop Reason) Reason {
	switch {
	case stop != "":
		return stop
	case last.err != nil && last.class == policy.Timeout:
		return ReasonTimeout
	case last.err != nil:
		return ReasonUpstreamUnavailable
	case last.class == policy.Invalid:
		return ReasonInvalidResponse
	}
	return ""
}

// alert sends an event to notify.webhook (deduplicated, rate limited,
// asynchronous; a no-op when no webhook is set). It never blocks.
func (s *Server) alert(kind supervise.Kind, route, upstream, detail string) {
	s.status.configure(s.Config())
	s.status.notifier.Notify(supervise.Event{Kind: kind, Route: route, Upstream: upstream, Detail: detail})
}

// alertJobFailed raises the alert for an async job that failed for good.
// The job is named by its store.JobRef, never its whole id (the capability to
// read its result); nothing of the request is shown.
func (s *Server) alertJobFailed(route, jobID, reason string) {
	s.alert(supervise.KindJobFailed, route, "", "job "+store.JobRef(jobID)+" failed for good: "+reason)
}

// recordAnswered records a request that ended without an observe of its
// own (an idempotency replay, a 422 mismatch, a collapsed cache hit, a
// refused body), judged by its status alone: 2xx and 3xx succeeded, 499 is
// an agent that left, other 4xx are the caller's, 5xx failed. Every
// request is in the route's /status window once.
func (s *Server) recordAnswered(ctx *fasthttp.RequestCtx, r *route) {
	class := policy.OK
	switch code := ctx.Response.StatusCode(); {
	case code == statusAgentGone:
		class = policy.Canceled
	case code >= 500:
		class = policy.Transient
	case code >= 400:
		class = policy.CallerFault
	}
	s.record(ctx, r, "", class, policy.CauseNone, "", 0, nil)
}
