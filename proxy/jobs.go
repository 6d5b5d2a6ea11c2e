package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

const jobsPath = "/_ballast/jobs/"

// asyncPolicy is a route's resolved async block.
type asyncPolicy struct{ ttl time.Duration }

func buildAsync(rc *config.Route) *asyncPolicy {
	if !rc.Async.Enabled {
		return nil
	}
	return &asyncPolicy{ttl: rc.Async.TTL.D()}
}

// jobPollEvery is how often a wait for a job this process does not run
// (another replica does) reads the job again.
const jobPollEvery = 250 * time.Millisecond

// jobRunner runs async jobs in the background and lets requests wait for
// them.
type jobRunner struct {
	mu sync.Mutex
	// done holds a channel per job running in this process, closed (and
	// removed) when the job finishes; only launch adds to it.
	done    map[string]chan struct{}
	wg      sync.WaitGroup
	stop    chan struct{}
	stopped bool
}

func newJobRunner() *jobRunner {
	return &jobRunner{done: map[string]chan struct{}{}, stop: make(chan struct{})}
}

// running returns the channel closed when the job with id, running in this
// process, finishes; ok is false when no job with id runs here.
func (j *jobRunner) running(id string) (done chan struct{}, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	done, ok = j.done[id]
	return done, ok
}

func (j *jobRunner) finish(id string) {
	j.mu.Lock()
	ch, ok := j.done[id]
	delete(j.done, id)
	j.mu.Unlock()
	if ok {
		close(ch)
	}
}

// prefer reads the RFC 7240 Prefer header: respond-async, and wait=N
// (delta-seconds, at most ten minutes). Each preference is a name, an
// optional "=" value (a token or a quoted string, space allowed around
// the "="), and ";" parameters, which are ignored; names are
// case-insensitive, and a preference given twice counts only the first
// time (RFC 7240 §2). A comma inside a quoted string (foo="a,b") does
// not end a preference.
func prefer(h *fasthttp.RequestHeader) (async bool, wait time.Duration) {
	seenWait := false
	for _, v := range h.PeekAll("Prefer") {
		for pref := range cache.Members(v) {
			// A ";" inside a quoted value cuts it short, but such a value
			// is no delta-seconds either way.
			pref, _, _ = bytes.Cut(pref, []byte(";"))
			name, val, hasVal := bytes.Cut(pref, []byte("="))
			name = bytes.TrimSpace(name)
			switch {
			case !hasVal && asciiEqualFold(name, []byte("respond-async")):
				async = true
			case !seenWait && asciiEqualFold(name, []byte("wait")):
				seenWait = true
				wait = waitSeconds(bytes.TrimSpace(val))
			}
		}
	}
	return async, wait
}

// waitSeconds reads a wait preference's delta-seconds, bare or quoted,
// capped at ten minutes (a longer one, however many digits, is ten
// minutes); 0 when it is not one.
func waitSeconds(v []byte) time.Duration {
	const most = int64(10 * time.Minute / time.Second)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if len(v) == 0 {
		return 0
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0
		}
		n = min(n*10+int64(c-'0'), most)
	}
	return time.Duration(n) * time.Second
}

// startJob answers Prefer: respond-async: the call runs in the background
// with the route's policies and the agent polls /_ballast/jobs/{id}.
// stored, when not nil, is called with the job's id once the job is
// stored and launched, before any wait for it. It reports false when the
// job could not be stored (the agent then got 503 state_unavailable).
//
// Storing the job is bounded by the request's deadline (a networked
// store's op_timeout may be longer than the time left): under fail_open a
// job Redis did not take in time is stored, and run, locally.
func (s *Server) startJob(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, wait time.Duration, stored func(id string)) bool {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	now := s.clock.Now()
	job := &store.Job{
		ID: hex.EncodeToString(raw[:]), Tenant: tenantOf(&ctx.Request.Header), Route: r.name, State: store.JobQueued,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(r.total + r.async.ttl),
		Request: store.Request{Method: string(ctx.Method()), URI: string(ctx.RequestURI()),
			Header: appendAgentAddr(requestHeaderLines(&ctx.Request.Header), ctx), Body: append([]byte(nil), body...)},
	}
	c, cancel := context.WithDeadline(context.Background(), s.wall(deadline))
	defer cancel()
	// Marked as a job's start, so that a failover store that sees Redis
	// fail the lease keeps the write local too (see failoverStore.PutJob).
	c = withJobStart(c)
	// The lease is taken before the job is stored, so that no replica
	// ever sees the job pending without it: one starting now, or one
	// adopting orphaned jobs (resumeJobs), would otherwise lease it in
	// between and run it while this one's agent waits here. Every store
	// leases an id it does not hold yet. A refused lease (a fresh random
	// id already leased) leaves the job to its holder. A failed lease
	// call is a failed state store: under fail_closed the agent is told
	// so at once, rather than after the job's write has waited out
	// op_timeout too; otherwise (fail_open, whose write goes to the local
	// store) it does not hold the job back, and the runner's renewals try
	// again.
	leased, lerr := s.state.LeaseJob(c, job.ID, now, store.DefaultJobLease)
	if lerr != nil && (s.shared == nil || !s.shared.failOpen) {
		s.stateUnavailable(ctx, r, lerr)
		return false
	}
	if err := s.state.PutJob(c, job); err != nil {
		if errors.Is(err, store.ErrTooLarge) {
			// The same request is refused the same way every time: a 503
			// would have the SDKs send it again, for nothing.
			writeProblem(ctx, problem{Status: fasthttp.StatusRequestEntityTooLarge, Reason: ReasonBodyTooLarge, Route: r.name,
				Detail: "an async job keeps its request in the state store, and this request is larger than state.max_response_bytes (" +
					formatBytes(s.maxStored) + "); send it without Prefer: respond-async, or raise the limit"})
			return false
		}
		s.stateUnavailable(ctx, r, err)
		return false
	}
	if leased || lerr != nil {
		running := *job // the runner owns its copy; job answers the agent below
		s.launch(&running, r)
	}
	if stored != nil {
		stored(job.ID)
	}
	wait, applied := s.asyncWait(ctx, wait, deadline)
	if wait > 0 {
		if done := s.awaitJob(ctx, job, wait); !done.State.Pending() {
			s.writeJob(ctx, done, applied)
			return true
		}
	}
	s.writeJobStatus(ctx, job, fasthttp.StatusAccepted, applied)
	return true
}

// asyncWait bounds the wait=N of ctx's Prefer: respond-async request by
// the request's deadline when the agent set one with X-Ballast-Timeout:
// the agent said how long it gives ballast, and the wait for the job is a
// wait of that request like any other. (timeouts.total alone does not cut
// it: the job runs for up to timeouts.total from its own start, and the
// wait is there to see it end.) It returns the wait and the
// Preference-Applied to answer with, which names the whole seconds
// waited at most.
func (s *Server) asyncWait(ctx *fasthttp.RequestCtx, wait time.Duration, deadline time.Time) (time.Duration, string) {
	if len(ctx.Request.Header.Peek(headerTimeout)) > 0 {
		wait = min(wait, deadline.Sub(s.clock.Now()))
	}
	applied := "respond-async"
	if wait <= 0 {
		return 0, applied
	}
	if secs := int(wait / time.Second); secs > 0 {
		applied += ", wait=" + strconv.Itoa(secs)
	}
	return wait, applied
}

// jobKeyPrefix starts the idempotency key under which a keyed async
// request records its job: a route name never starts with '@', so the
// records of jobs and of plain keyed requests never meet.
const jobKeyPrefix = "@job|"

// guardJob starts the job of a Prefer: respond-async request that carries
// an idempotency key (or, in auto mode, any such request) once: the first
// request with the key records its job under the key, and a repeat is
// answered with that job — its state, or its result once it has one, as
// GET /_ballast/jobs/{id} would answer, with Idempotent-Replayed: true —
// so the upstream call runs once however often the agent re-sends it.
// The same key with another request is a mismatch, as for any keyed
// request. It reports false when the request is not guarded.
func (s *Server) guardJob(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, wait time.Duration) bool {
	fp := store.Fingerprint(ctx.Method(), ctx.RequestURI(), body, s.fingerprintHeaders(ctx, r)...)
	key, ok, handled := s.idemKey(ctx, r, fp)
	if handled {
		return true
	}
	if !ok {
		return false
	}
	key = jobKeyPrefix + key
	ttl := jobKeyTTL(r)
	c, cancel := context.WithDeadline(context.Background(), s.wall(deadline))
	defer cancel()
	for {
		rec, owned, err := s.state.Claim(c, key, store.ClaimArgs{Fingerprint: fp, Now: s.clock.Now(), Lease: r.idem.lease, TTL: ttl})
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
			if !s.startJob(ctx, r, body, deadline, wait, func(id string) {
				s.settle(r, rec, &store.Response{Status: fasthttp.StatusAccepted, Header: []byte("Location: " + jobsPath + id + "\r\n")}, ttl)
			}) {
				s.settle(r, rec, nil, ttl)
			}
			return true
		case rec.State == store.InFlight: // the first request is storing its job
			if rec, err = s.state.Wait(c, key); err != nil {
				if c.Err() != nil {
					writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonInProgress, Route: r.name,
						RetryAfter: time.Second, Detail: "a request with this key is still starting its job"})
					return true
				}
				s.stateUnavailable(ctx, r, err)
				return true
			}
			if rec == nil {
				continue // released: the job could not be stored; try again
			}
		}
		id := ""
		if rec.State == store.Completed && rec.Response != nil {
			eachHeaderLine(rec.Response.Header, func(k, v []byte) {
				if asciiEqualFold(k, []byte("Location")) && bytes.HasPrefix(v, []byte(jobsPath)) {
					id = string(v[len(jobsPath):])
				}
			})
		}
		if id == "" {
			s.noteIdem(ctx, r, idemUnknown)
			writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonOutcomeUnknown, Route: r.name,
				Detail: "a request with this key started a job, but ballast stopped before it was recorded; " +
					"it may or may not have run. Check before retrying with a new key."})
			return true
		}
		s.noteIdem(ctx, r, idemReplayed)
		wait, applied := s.asyncWait(ctx, wait, deadline)
		s.serveJob(ctx, id, tenantOf(&ctx.Request.Header), wait, applied)
		ctx.Response.Header.Set(headerReplayed, "true")
		return true
	}
}

// jobKeyTTL is how long the idempotency key of a keyed job on r names
// the job: idempotency.ttl (window in auto mode), but no longer than a
// job may live, timeouts.total plus async.ttl. A keyed job that finishes
// sooner is kept until its key lets go (runJob): a repeat of the keyed
// request finds the job, never a 404 for a job its key still holds.
func jobKeyTTL(r *route) time.Duration {
	ttl := r.idem.ttl
	if r.idem.auto {
		ttl = r.idem.window
	}
	return min(ttl, r.total+r.async.ttl)
}

// launch runs job in the background through r, the route that accepted
// it, or, when r is nil (a job resumed from the store), through the route
// of the table in force named job.Route. A wait for the job can then
// follow it on s.jobs.running until it finishes.
func (s *Server) launch(job *store.Job, r *route) {
	s.jobs.mu.Lock()
	if s.jobs.stopped {
		s.jobs.mu.Unlock()
		return
	}
	if _, ok := s.jobs.done[job.ID]; ok {
		// Already running here: the request that created it and the
		// adoption of pending jobs (adoptJobs) may both get here.
		s.jobs.mu.Unlock()
		return
	}
	s.jobs.done[job.ID] = make(chan struct{})
	s.jobs.wg.Add(1)
	s.jobs.mu.Unlock()
	go func() {
		defer s.jobs.wg.Done()
		s.runJob(job, r)
	}()
}

// runJob runs the job's request through r, as a request would, and
// stores the outcome. A job accepted on this replica runs through the
// route that accepted it (like a request in flight, a reload does not
// change or fail it); r nil, for a job resumed from the store, means the
// route named job.Route in the table in force, and the job fails when
// there is none.
func (s *Server) runJob(job *store.Job, r *route) {
	defer s.jobs.finish(job.ID)
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r == nil {
		for _, cand := range s.table.Load().routes {
			if cand.name == job.Route {
				r = cand
			}
		}
	}
	if r == nil {
		s.failJob(c, job, "the route "+job.Route+" no longer exists")
		return
	}
	defer s.keepLease(job.ID)()
	job.State, job.UpdatedAt = store.JobRunning, s.clock.Now()
	_ = s.storeJob(c, job)

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	if readRequestHead(&req.Header, &job.Request) != nil {
		// Not a head fasthttp reads back (a record from elsewhere): the
		// fields one by one, Cookie through fasthttp's parser.
		req.Header.Reset()
		req.Header.SetMethod(job.Request.Method)
		req.SetRequestURI(job.Request.URI)
		eachHeaderLine(job.Request.Header, req.Header.AddBytesKV)
	}
	req.SetBodyRaw(job.Request.Body)
	// A job guardJob started under an idempotency key (the condition of
	// idemKey): the key names it for jobKeyTTL from its start.
	keyed := r.idem != nil && r.async != nil && (r.idem.auto || len(req.Header.Peek(headerIdempotencyKey)) > 0)
	// The agent's address, as the request run directly has it; a record
	// without one (from an older ballast) runs with none.
	var agent net.Addr
	if ap, err := netip.ParseAddrPort(string(req.Header.Peek(headerAgentAddr))); err == nil {
		agent = net.TCPAddrFromAddrPort(ap)
	}
	req.Header.Del(headerAgentAddr)
	var rc fasthttp.RequestCtx
	rc.Init(req, agent, nil)
	s.ids.assign(&rc)
	start := s.clock.Now()
	// A keyed job is guarded as a keyed request is (runGuarded): in header
	// mode its key travels upstream, so ballast's own retries are safe.
	s.run(&rc, r, job.Request.Body, start.Add(r.total), keyed && !r.idem.auto)

	resp := &rc.Response
	var (
		body    []byte
		bodyErr string
	)
	// Not resp.Body() first: on a streamed answer it reads all of it.
	if stream := resp.BodyStream(); stream == nil {
		body = resp.Body()
	} else {
		rb, _ := stream.(*relayBody)
		if rb != nil {
			rb.prefetching = true // a break fails the job; no agent sees a truncated stream
			s.live.add(rb)        // Shutdown calls the read off if it outlasts the drain
		}
		// Read no more than the store keeps: a larger answer fails the
		// job now, not after all of it sat in memory.
		limit := s.maxStored
		var err error
		body, err = io.ReadAll(io.LimitReader(stream, limit+1))
		if rb != nil {
			s.live.remove(rb)
		}
		_ = resp.CloseBodyStream()
		switch {
		case err != nil:
			bodyErr = "the upstream's answer broke off after " + strconv.Itoa(len(body)) + " bytes: " + err.Error()
		case int64(len(body)) > limit:
			bodyErr = "the response was larger than state.max_response_bytes"
		}
	}
	status := resp.StatusCode()
	if (bodyErr != "" || status >= 500) && s.agents.isHalted() {
		s.haltedJob(job)
		return
	}
	job.Attempts, _ = strconv.Atoi(string(resp.Header.Peek(headerAttempts)))
	// A HEAD's answer keeps its Content-Length, which a HEAD poll tells
	// (RFC 9110 §9.3.2) though there is no body to count it from.
	header := cache.AppendResponseHeader(nil, resp)
	if id := resp.Header.Peek(headerRequestID); len(id) > 0 {
		// Kept with the answer, which a poll serves as the run's (writeJob).
		header = append(append(append(append(header, headerRequestID...), ": "...), id...), "\r\n"...)
	}
	if up := resp.Header.Peek(headerUpstream); len(up) > 0 {
		// The upstream that answered the run, kept as X-Ballast-Attempts
		// is: the poll tells the truth about the run it serves.
		header = append(append(append(append(header, headerUpstream...), ": "...), up...), "\r\n"...)
	}
	job.Response = &store.Response{Status: status, Header: header, Body: append([]byte(nil), body...)}
	job.State, job.UpdatedAt = store.JobSucceeded, s.clock.Now()
	switch {
	case bodyErr != "":
		// Never a cut-off answer stored as the job's result.
		job.Response = &store.Response{Status: fasthttp.StatusBadGateway}
		job.State, job.LastError = store.JobFailed, bodyErr
	case status >= 500:
		job.State, job.LastError = store.JobFailed, "the last attempt answered "+strconv.Itoa(status)
	}
	job.ExpiresAt = job.UpdatedAt.Add(s.jobTTL(r))
	if keyed {
		if held := job.CreatedAt.Add(jobKeyTTL(r)); held.After(job.ExpiresAt) {
			job.ExpiresAt = held
		}
	}
	forgetRequest(job)
	const tooLarge = "the response was larger than state.max_response_bytes"
	if int64(job.Response.Size()) > s.maxStored {
		// The body fit, but not with its header: the store would refuse it.
		job.Response = &store.Response{Status: fasthttp.StatusBadGateway}
		job.State, job.LastError = store.JobFailed, tooLarge
	}
	// The run may well have outlasted c: the outcome gets a deadline of its own.
	out, cancelOut := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelOut()
	if job.State == store.JobFailed {
		s.failJob(out, job, job.LastError)
		return
	}
	if err := s.storeJob(out, job); errors.Is(err, store.ErrTooLarge) {
		// A store whose limit is below state.max_response_bytes.
		job.Response = &store.Response{Status: fasthttp.StatusBadGateway}
		s.failJob(out, job, tooLarge)
	}
}

// haltedJob records a job that Shutdown called off when its drain ran out
// of time (agentWatch.halt): its outcome upstream is unknown. A state
// backend that outlives the process keeps the job pending, as a job cut
// by a crash is, so that the next ballast to start (or another replica,
// once the lease lapses) resumes it where that is safe and fails it as
// outcome unknown where it is not (resumeJobs). The memory backend's jobs
// end with the process: the job fails, saying why.
func (s *Server) haltedJob(job *store.Job) {
	if s.stateLasts {
		s.log.Warn("async job called off by shutdown; it resumes when ballast restarts", "job", store.JobRef(job.ID), "route", job.Route)
		return
	}
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.failJob(c, job, "ballast shut down before the call finished (shutdown_timeout ran out); it may or may not have run")
}

// keepLease renews this process's lease on the job with id every third of
// store.DefaultJobLease until the returned stop is called. The renewals
// are paced on the wall clock, like the state sweeper: they are
// housekeeping, and an injected clock's waiters must not count them; the
// lease itself is reckoned on s.clock.
func (s *Server) keepLease(id string) (stop func()) {
	quit, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			t := policy.SystemClock{}.NewTimer(store.DefaultJobLease / 3)
			select {
			case <-quit:
				t.Stop()
				return
			case <-t.C():
			}
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			leased, err := s.state.LeaseJob(c, id, s.clock.Now(), store.DefaultJobLease)
			cancel()
			if err == nil && !leased {
				s.log.Warn("async job lease lost: another replica may run the job too", "job", store.JobRef(id))
			}
		}
	}()
	return func() {
		close(quit)
		<-stopped
	}
}

// wallPaced is a clock whose timers are the wall clock's and whose Now is
// the injected clock's. The state sweeper runs on it: its pace is
// housekeeping (an injected clock's timer would count among a fake clock's
// waiters and stall until a test advances it), but what it removes must
// be what already reads as expired on the server's clock.
type wallPaced struct{ policy.Clock }

// NewTimer returns a wall-clock timer.
func (wallPaced) NewTimer(d time.Duration) policy.Timer { return policy.SystemClock{}.NewTimer(d) }

func (s *Server) jobTTL(r *route) time.Duration {
	if r.async != nil {
		return r.async.ttl
	}
	return time.Hour
}

// failJob stores job as failed for why. Its log line and job_failed
// alert come first: an agent that reads the job as failed (a poll
// returns as soon as the store has it) can count on the alert having
// been raised, and a supervisor that checks on the agent's word finds it.
// A job that failed with a response (a 5xx, a cut answer's 502) keeps it.
func (s *Server) failJob(c context.Context, job *store.Job, why string) {
	job.State, job.LastError, job.UpdatedAt = store.JobFailed, why, s.clock.Now()
	forgetRequest(job)
	s.log.Warn("async job failed", "job", store.JobRef(job.ID), "route", job.Route, "error", why)
	s.alertJobFailed(job.Route, job.ID, why)
	_ = s.storeJob(c, job)
}

// storeJob writes the state of a job that is running or has ended. Only
// the runner writes it, after the agent had its 202: a write the store
// refuses (other than one too large, which the caller answers) is logged
// and raises a state_failing alert, or nobody would hear of it, and the
// agent's polls would read the job as it was before. The alert names the
// job by its JobRef only, never the store's error (a path, an address).
func (s *Server) storeJob(c context.Context, job *store.Job) error {
	err := s.state.PutJob(c, job)
	switch {
	case err == nil, errors.Is(err, store.ErrTooLarge):
	case errors.Is(err, store.ErrClosed):
		s.log.Warn("async job: its state was not recorded: the state store is closed", "job", store.JobRef(job.ID),
			"route", job.Route, "state", job.State.String())
	default:
		s.log.Error("async job: the state store refused to record its state; polls read the job as it was before",
			"job", store.JobRef(job.ID), "route", job.Route, "state", job.State.String(), "error", err.Error())
		s.alert(supervise.KindStateFailing, job.Route, "", "the state store refused to record that job "+store.JobRef(job.ID)+" is "+job.State.String())
	}
	return err
}

// forgetRequest drops a finished job's request headers and body, keeping
// its method and URI. They were stored only so that a pending job could
// run again after a restart; a final job never runs again, and they may
// carry the agent's credentials (Authorization, API keys), which should
// not sit in the state backend for the job's TTL.
func forgetRequest(job *store.Job) {
	job.Request.Header, job.Request.Body = nil, nil
}

// resumeJobs picks up the jobs a previous process left pending: on routes
// where running the call again is safe they run again; otherwise their
// outcome is unknown and they fail, saying so. A job is a leftover only
// when this process can lease it: with Redis, the pending jobs of the
// other live replicas stay theirs (their leases are renewed).
func (s *Server) resumeJobs() {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := s.state.ListJobs(c, store.JobQueued, store.JobRunning)
	if err != nil {
		s.log.Error("listing pending jobs failed", "error", err.Error())
		return
	}
	routes := map[string]*route{}
	for _, r := range s.table.Load().routes {
		routes[r.name] = r
	}
	for _, job := range jobs {
		if _, local := s.jobs.running(job.ID); local {
			continue // this process runs it, and renews its lease
		}
		leased, err := s.state.LeaseJob(c, job.ID, s.clock.Now(), store.DefaultJobLease)
		if err != nil {
			s.log.Error("leasing a pending job failed", "job", store.JobRef(job.ID), "error", err.Error())
			continue
		}
		if !leased {
			continue // another replica runs it
		}
		r := routes[job.Route]
		safe := r != nil && (job.State == store.JobQueued || (r.idem != nil && r.idem.idempotent) ||
			policy.IdempotentMethod([]byte(job.Request.Method)) || r.retry.UnsafeMethods ||
			r.idem != nil && !r.idem.auto && sendsKey(job))
		if !safe {
			s.failJob(c, job, "ballast stopped while the call was running; its outcome is unknown")
			continue
		}
		s.log.Info("resuming async job", "job", store.JobRef(job.ID), "route", job.Route)
		s.launch(job, r)
	}
}

// sendsKey reports whether job's stored request carries an
// Idempotency-Key. On a route in header mode the key travels upstream
// with the call, which makes running it again as safe as ballast's own
// retry of a keyed job (runJob).
func sendsKey(job *store.Job) (ok bool) {
	eachHeaderLine(job.Request.Header, func(k, v []byte) {
		ok = ok || asciiEqualFold(k, []byte(headerIdempotencyKey)) && len(v) > 0
	})
	return ok
}

// adoptJobs resumes, every interval until ctx ends, the pending jobs of
// the shared store that no live replica holds a lease on (resumeJobs):
// those of a replica that died, or of this one before a restart. Paced
// on the wall clock, like the sweeper.
func (s *Server) adoptJobs(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.resumeJobs()
		}
	}
}

// handleJob serves GET /_ballast/jobs/{id} on the main listener. Jobs are
// visible only to the caller identity that started them.
func (s *Server) handleJob(ctx *fasthttp.RequestCtx) {
	id := string(ctx.Path()[len(jobsPath):])
	_, wait := prefer(&ctx.Request.Header)
	// X-Ballast-Timeout bounds the poll's wait, as it bounds the wait of
	// the request that starts a job (asyncWait): every line must be
	// valid, and the lowest applies.
	for _, v := range ctx.Request.Header.PeekAll(headerTimeout) {
		d, err := parseTimeoutHeader(v)
		if err != nil {
			writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest,
				Detail: headerTimeout + ": " + err.Error()})
			return
		}
		wait = min(wait, d)
	}
	applied := ""
	if secs := int(wait / time.Second); secs > 0 {
		applied = "wait=" + strconv.Itoa(secs)
	}
	s.serveJob(ctx, id, tenantOf(&ctx.Request.Header), wait, applied)
}

// serveJob answers for the job with id, waiting up to wait for it to
// finish. A job past its ExpiresAt (on s.clock) is gone, as it will be
// once swept. A store that cannot be read is a 503 state_unavailable.
func (s *Server) serveJob(ctx *fasthttp.RequestCtx, id, tenant string, wait time.Duration, applied string) {
	job, err := s.readJob(id)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrInvalid) {
		// Not "no job": an agent told so would start it again.
		s.stateUnavailableOn(ctx, "", err)
		return
	}
	if err != nil || job.Tenant != tenant || job.Expired(s.clock.Now()) {
		writeProblem(ctx, problem{Status: fasthttp.StatusNotFound, Reason: ReasonNoRoute,
			Detail: "no job " + strconv.Quote(id) + " for this caller (unknown, expired, or started by another identity)"})
		return
	}
	if job.State.Pending() && wait > 0 {
		job = s.awaitJob(ctx, job, wait)
	}
	s.writeJob(ctx, job, applied)
}

// readJob reads the job with id, each read with its own deadline.
func (s *Server) readJob(id string) (*store.Job, error) {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.state.GetJob(c, id)
}

// awaitJob waits up to d (on the server's clock) for the pending job to
// finish and returns it as last read. A job running in this process is
// followed on its runner's channel; one that is not (it runs on another
// replica, or has just finished here) is read again at once and then every
// jobPollEvery.
func (s *Server) awaitJob(ctx *fasthttp.RequestCtx, job *store.Job, d time.Duration) *store.Job {
	deadline := s.clock.NewTimer(d)
	defer deadline.Stop()
	for {
		done, local := s.jobs.running(job.ID)
		var poll policy.Timer
		var tick <-chan time.Time
		var drained <-chan struct{}
		if !local {
			if j, err := s.readJob(job.ID); err == nil {
				job = j
			}
			if !job.State.Pending() {
				return job
			}
			poll = s.clock.NewTimer(jobPollEvery)
			tick = poll.C()
			// A job run elsewhere holds nothing here up: once Shutdown
			// begins the agent is answered, and polls another replica.
			// One run here is waited for, as the drain waits for it,
			// until fasthttp's Shutdown closes ctx.Done at the deadline.
			drained = s.drain.Done()
		}
		over := false
		select {
		case <-done: // finished here: the next round reads it
		case <-tick:
		case <-deadline.C():
			over = true
		case <-ctx.Done():
			over = true
		case <-drained:
			over = true
		}
		if poll != nil {
			poll.Stop()
		}
		if over {
			return job
		}
	}
}

// writeJob answers with the job: its status (202) while it is pending, its
// stored response once it has one, and a problem when it ended without one.
func (s *Server) writeJob(ctx *fasthttp.RequestCtx, job *store.Job, applied string) {
	switch {
	case job.State.Pending():
		s.writeJobStatus(ctx, job, fasthttp.StatusAccepted, applied)
		return
	case job.Response == nil:
		// Failed without an answer: ballast stopped while it ran and
		// running it again was not safe, or its route is gone. Whether the
		// call reached the upstream is not known, so it is reported the
		// way a guarded request's lost outcome is; LastError says why.
		writeProblem(ctx, problem{Status: fasthttp.StatusConflict, Reason: ReasonOutcomeUnknown, Route: job.Route,
			Attempts: job.Attempts, Detail: "the job " + job.ID + " ended without a response: " + job.LastError})
	default:
		replay(ctx, job.Response)
		ctx.Response.Header.Del(headerReplayed)
		// The answer is the job's run: it keeps that run's X-Request-Id,
		// which its log line and a problem's request_id name (polls are
		// not logged).
		eachHeaderLine(job.Response.Header, func(k, v []byte) {
			if asciiEqualFold(k, []byte(headerRequestID)) {
				ctx.Response.Header.SetBytesV(headerRequestID, v)
			}
		})
		s.countDownRetryAfter(ctx, job)
	}
	ctx.Response.Header.Set("X-Ballast-Job-State", job.State.String())
	ctx.Response.Header.Set(headerAttempts, strconv.Itoa(job.Attempts))
	if applied != "" {
		ctx.Response.Header.Set("Preference-Applied", applied)
	}
}

// countDownRetryAfter makes the Retry-After (delta-seconds) of a job's
// stored answer count from this poll: the wait its run was told (a 429 or
// 503) began when the job finished, so a later poll names what is left of
// it, rounded up, and 0 once it has passed. An HTTP-date stays as it is.
func (s *Server) countDownRetryAfter(ctx *fasthttp.RequestCtx, job *store.Job) {
	secs, err := strconv.Atoi(string(ctx.Response.Header.Peek("Retry-After")))
	if err != nil || secs < 0 || secs > 1<<31 { // beyond 68 years: left as it is
		return
	}
	left := time.Duration(secs)*time.Second - s.clock.Now().Sub(job.UpdatedAt)
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(max(0, (left+time.Second-1)/time.Second))))
}

// writeJobStatus answers with the job's state while it runs.
func (s *Server) writeJobStatus(ctx *fasthttp.RequestCtx, job *store.Job, status int, applied string) {
	type jobStatus struct {
		ID          string     `json:"id"`
		State       string     `json:"state"`
		Route       string     `json:"route"`
		Attempts    int        `json:"attempts"`
		LastError   string     `json:"last_error,omitempty"`
		NextRetryAt *time.Time `json:"next_retry_at,omitempty"`
		CreatedAt   time.Time  `json:"created_at"`
		UpdatedAt   time.Time  `json:"updated_at"`
		Location    string     `json:"location"`
	}
	js := jobStatus{ID: job.ID, State: job.State.String(), Route: job.Route, Attempts: job.Attempts, LastError: job.LastError,
		CreatedAt: job.CreatedAt, UpdatedAt: job.UpdatedAt, Location: jobsPath + job.ID}
	if !job.NextRetryAt.IsZero() {
		js.NextRetryAt = &job.NextRetryAt
	}
	b, _ := json.Marshal(js)
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.Header.Set("Location", jobsPath+job.ID)
	ctx.Response.Header.Set("Retry-After", "1")
	if applied != "" {
		ctx.Response.Header.Set("Preference-Applied", applied)
	}
	ctx.SetBody(b)
}

// requestHeaderLines renders request headers as "Name: value\r\n" lines.
// The Cookie lines of a request read from an agent are kept as the agent
// wrote them, last: fasthttp's parsed cookies lose quoted and backslashed
// values (copyCookies), and a job's request must reach the upstream as a
// direct one does (readRequestHead).
func requestHeaderLines(h *fasthttp.RequestHeader) []byte {
	var b []byte
	line := func(k, v []byte) {
		b = append(b, k...)
		b = append(b, ": "...)
		b = append(b, v...)
		b = append(b, "\r\n"...)
	}
	raw := len(h.RawHeaders()) > 0
	for k, v := range h.All() {
		if (!raw || !bytes.Equal(k, strCookie)) && !asciiEqualFold(k, strAgentAddr) {
			line(k, v)
		}
	}
	if raw {
		for k, v := range h.AllInOrder() {
			if asciiEqualFold(k, strCookie) {
				line(strCookie, v)
			}
		}
	}
	return b
}

// headerAgentAddr carries, in a job's stored request, the address of the
// agent that sent it, so that the job's call has it as its remote address
// (X-Forwarded-For, a rate limit keyed by ip) as the request run directly
// does. Like every X-Ballast-* request line it never goes upstream, and an
// agent's own line of this name is not stored (requestHeaderLines).
const headerAgentAddr = "X-Ballast-Agent-Addr"

var strAgentAddr = []byte(headerAgentAddr)

// appendAgentAddr appends ctx's agent address to a job's header lines b.
func appendAgentAddr(b []byte, ctx *fasthttp.RequestCtx) []byte {
	ta, ok := ctx.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return b
	}
	b = append(append(b, headerAgentAddr...), ": "...)
	b = ta.AddrPort().AppendTo(b)
	return append(b, "\r\n"...)
}

// readRequestHead reads a stored request's method, URI and header lines
// into h as fasthttp reads an agent's request head, so that h keeps its
// raw lines (RawHeaders) and forwards as the agent's request did
// (buildOutbound's Cookie lines).
func readRequestHead(h *fasthttp.RequestHeader, r *store.Request) error {
	head := make([]byte, 0, len(r.Method)+len(r.URI)+len(r.Header)+16)
	head = append(append(append(append(head, r.Method...), ' '), r.URI...), " HTTP/1.1\r\n"...)
	head = append(append(head, r.Header...), "\r\n"...)
	return h.Read(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16))
}

// eachHeaderLine calls add for every "Name: value\r\n" line of lines, the
// form stored responses and jobs keep their headers in.
func eachHeaderLine(lines []byte, add func(k, v []byte)) {
	for len(lines) > 0 {
		line := lines
		if i := bytes.Index(lines, []byte("\r\n")); i >= 0 {
			line, lines = lines[:i], lines[i+2:]
		} else {
			lines = nil
		}
		if k, v, ok := bytes.Cut(line, []byte(": ")); ok {
			add(k, v)
		}
	}
}

// jobsStatus is the async-job section of /status: what is running, waiting
// or failed, with its next action, each job named by its store.JobRef. It reads
// the state store, so it costs a scan of the jobs; /status is not on the
// request path.
func (s *Server) jobsStatus(now time.Time) *supervise.JobsStatus {
	c, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	jobs, err := s.state.ListJobs(c)
	if err != nil || len(jobs) == 0 {
		return nil
	}
	out := &supervise.JobsStatus{Running: []supervise.Job{}, Waiting: []supervise.Job{}, Failed: []supervise.Job{}}
	for _, j := range jobs {
		sj := supervise.Job{ID: store.JobRef(j.ID), Route: j.Route, Attempts: j.Attempts, Reason: j.LastError}
		switch j.State {
		case store.JobRunning:
			sj.NextAction = "deliver"
			if !j.NextRetryAt.IsZero() {
				sj.NextAction, sj.NextAt = "retry", &j.NextRetryAt
			}
			out.Running = append(out.Running, sj)
		case store.JobQueued:
			sj.NextAction = "run"
			out.Waiting = append(out.Waiting, sj)
		case store.JobFailed:
			sj.NextAction = "none"
			if !j.ExpiresAt.IsZero() {
				sj.NextAt = &j.ExpiresAt
			}
			out.Failed = append(out.Failed, sj)
		}
	}
	return out
}

// registerJobGauge exports ballast_jobs{state}, counted from the store
// when scraped.
func (s *Server) registerJobGauge() {
	for _, st := range []store.JobState{store.JobQueued, store.JobRunning, store.JobSucceeded, store.JobFailed} {
		st := st
		s.m.registerFunc(funcID("ballast_jobs", st.String()), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ballast_jobs", Help: "Async jobs in the state store, by state.",
			ConstLabels: prometheus.Labels{"state": st.String()},
		}, func() float64 {
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			jobs, err := s.state.ListJobs(c, st)
			if err != nil {
				return 0
			}
			return float64(len(jobs))
		}))
	}
}
