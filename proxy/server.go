// Package proxy is ballast's request path: the agent-facing server, route
// matching, forwarding and streaming, and the admin listener. It is the only
// package that turns a config.Config into running policies.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/ballast-proxy/ballast/internal/logsink"
	"github.com/ballast-proxy/ballast/internal/rawio"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Options are a Server's collaborators. The zero value of each field means
// its default.
type Options struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Registry receives ballast's metrics, plus the Go and process
	// collectors when it lacks them, and serves /metrics. Default: a new
	// registry.
	Registry *prometheus.Registry
	// Clock is the source of time for policy decisions. Default: the wall
	// clock.
	Clock policy.Clock
	// Source, when set, is where Reload (SIGHUP, file changes, POST
	// /reload) reads the config again. Without it, Reload is refused.
	Source *config.Source
	// AccessLog receives the decision trail, one JSON line per request.
	// Default: os.Stderr. Unless it is a *logsink.Sink already, ballast
	// writes to it through one of its own, so that a stuck destination
	// never holds a request up (lines are dropped and counted instead).
	AccessLog io.Writer
	// AgentCheckEvery is how often ballast looks whether the agents of
	// calls running longer than that have hung up, to call their upstream
	// work off (see agentWatch). Default: 1s.
	AgentCheckEvery time.Duration
}

// Server is a running ballast: the agent-facing listener and the admin
// listener over one atomically swapped route table.
type Server struct {
	log   *slog.Logger
	reg   *prometheus.Registry
	clock policy.Clock
	// systemClock is true when clock is the wall clock, so that a
	// time.Now() reading can stand for clock.Now() (see clockAt).
	systemClock bool
	m           *metrics
	ids         *idSource
	ups         *upstreamPool
	health      *healthPool
	limiters    *limiterPool

	trails *accessLog
	// sink is where trail lines go; ownSink: New made it, Shutdown closes it.
	sink    *logsink.Sink
	ownSink bool
	// trailInfo and trailWarn: whether the logger's level lets through the
	// trail's success lines (INFO) and failure lines (WARN); resolved once,
	// since the logger does not change after New.
	trailInfo, trailWarn bool
	state                store.Store // idempotency records and async jobs
	// stateLocal: the memory and file backends, whose Claim, Complete and
	// Release never wait on their context (only Wait does), so callers need
	// not arm a deadline (a timer) for them.
	stateLocal bool
	// stateLasts: the file and redis backends, whose records outlive the
	// process (a pending job resumes after a restart).
	stateLasts bool
	// maxStored is the largest response the state store keeps: the
	// state.max_response_bytes it was opened with (state.* changes only
	// on restart, whatever a reload's file says).
	maxStored int64
	// settling counts the keyed answers being recorded in a networked
	// store after the agent has them; Shutdown waits for them.
	settling   sync.WaitGroup
	shared     *shared // Redis, when state.backend is redis
	jobs       *jobRunner
	agents     *agentWatch // calls whose agent may hang up
	bgOnce     sync.Once
	bgCancel   context.CancelFunc // stops the state sweeper and the agent watch
	bgDone     chan struct{}
	sweepEvery time.Duration

	table    atomic.Pointer[table]
	ready    atomic.Bool
	draining atomic.Bool
	// drain is cancelled when Shutdown begins: waits that have sent
	// nothing yet end on it.
	drain     context.Context
	drainStop context.CancelFunc
	// delayCut is cancelled by a Shutdown call after the first: it ends
	// the first call's shutdown_delay (see waitDelay). shutdownTurn (one
	// slot) lets one Shutdown call run at a time: the drains of two would
	// each take the other's wake-ups (conns.changed).
	delayCut     context.Context
	cutDelay     context.CancelFunc
	shutdownTurn chan struct{}
	// streams are the HTTP/1.0 streams relayed on hijacked connections
	// (closeDelimited), which fasthttp's shutdown no longer sees; hijacked
	// holds their connections, closed when the drain runs out of time.
	streams  sync.WaitGroup
	hijacked sync.Map // net.Conn → struct{}
	// live are the streamed answers being relayed (HTTP/1.1 and 1.0),
	// called off when the drain runs out of time.
	live liveStreams
	// adminExposed: the admin listener is bound beyond loopback. The bound
	// address changes only on restart, so a reload may not drop the token
	// that guards it.
	adminExposed atomic.Bool
	// adminFails limits wrong admin tokens (see adminFailBurst).
	adminFails adminFailures
	src        *config.Source
	reloadMu   sync.Mutex
	frozen     bool // under reloadMu: FreezeConfig was called
	unmatched  *routeMetrics
	status     *statusBoard // /status, the status page and alerts

	// shortLogged is when noteShortage last logged (Unix nanoseconds on
	// the server's clock; 0: never).
	shortLogged atomic.Int64

	srv      *fasthttp.Server
	adminSrv *fasthttp.Server
	// serving and adminServing are the listeners given to Serve and
	// ServeAdmin, closed by Shutdown even before fasthttp reached them.
	serving, adminServing listenerSet
	// conns and adminConns are the servers' connections, whose idle
	// ones Shutdown closes before fasthttp's drain begins (see conns).
	conns, adminConns conns

	mu          sync.Mutex
	promHandler fasthttp.RequestHandler
}

// New builds a Server on cfg. It validates nothing itself: cfg comes from
// config.Load, which already did.
func New(cfg *config.Config, opts Options) (*Server, error) {
	s := &Server{
		log:      opts.Logger,
		reg:      opts.Registry,
		clock:    opts.Clock,
		ids:      newIDSource(),
		health:   newHealthPool(),
		limiters: newLimiterPool(),
		src:      opts.Source,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.clock == nil {
		s.clock = policy.SystemClock{}
	}
	_, s.systemClock = s.clock.(policy.SystemClock)
	var accessOut io.Writer = os.Stderr
	if opts.AccessLog != nil {
		accessOut = opts.AccessLog
	}
	s.sink, _ = accessOut.(*logsink.Sink)
	if s.sink == nil {
		s.sink, s.ownSink = logsink.New(accessOut, 0), true
	}
	// The wall clock, not s.clock: flushing is not a policy decision, and a
	// flush timer must not count among an injected clock's waiters.
	s.trails = newAccessLog(s.sink, policy.SystemClock{}, cfg.Log.FlushInterval.D())
	s.trailInfo = s.log.Enabled(context.Background(), slog.LevelInfo)
	s.trailWarn = s.log.Enabled(context.Background(), slog.LevelWarn)
	s.ups = newUpstreamPool(s.clock)
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	if err := registerRuntime(s.reg); err != nil {
		return nil, err
	}
	s.m = newMetrics(s.reg)
	s.m.registerLogDrops(s.sink.Dropped)
	s.unmatched = s.m.forRoute(unmatchedRoute)
	// State first: with Redis, the limiters the table builds are the fleet's.
	st, backend, err := s.openState(cfg.State)
	if err != nil {
		return nil, err
	}
	t, err := s.buildTable(cfg)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	s.table.Store(t)
	s.limiters.sweep()
	s.ups.sweep()
	s.health.sweep()
	s.m.retain(t)
	// What `ballast run` binds; ServeAdmin also marks a real address beyond
	// loopback.
	s.adminExposed.Store(!config.IsLoopback(cfg.Admin.Listen))
	if f, ok := st.(*store.File); ok {
		rec := f.Recovery()
		s.log.Info("state file opened", "path", cfg.State.Path, "records", rec.Records,
			"unknown_outcome", rec.UnknownOutcome, "jobs", rec.Jobs, "pending_jobs", rec.PendingJobs)
		if rec.JournalDiscarded {
			s.log.Warn("the claim journal's header was damaged: claims made in the last milliseconds before the stop may be lost, and a retry of one could run its call again",
				"journal", cfg.State.Path+".claims")
		}
	}
	s.state = newTimedStore(st, backend, s.m)
	s.stateLocal = backend != "redis"
	s.stateLasts = backend != "memory"
	s.maxStored = int64(cfg.State.MaxResponseBytes)
	if s.maxStored <= 0 {
		s.maxStored = store.DefaultMaxResponseBytes
	}
	s.jobs = newJobRunner()
	s.agents = newAgentWatch(opts.AgentCheckEvery)
	s.drain, s.drainStop = context.WithCancel(context.Background())
	s.delayCut, s.cutDelay = context.WithCancel(context.Background())
	s.shutdownTurn = make(chan struct{}, 1)
	s.sweepEvery = cfg.State.SweepEvery.D()
	s.status = newStatusBoard(cfg, s.clock, s.log)
	s.status.board.Retain(t.boardNames())
	s.status.setHooks(statusHooks{cache: cacheStatus, jobs: s.jobsStatus})
	s.registerJobGauge()
	s.srv = &fasthttp.Server{
		Handler:                       s.handle,
		ErrorHandler:                  s.handleParseError,
		ExpectHandler:                 s.expectContinue,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		ReadBufferSize:                int(cfg.Server.MaxHeaderBytes),
		StreamRequestBody:             true,
		MaxRequestBodySize:            1 << 30, // routes enforce their own max_body
		IdleTimeout:                   cfg.Server.IdleTimeout.D(),
		ReadTimeout:                   cfg.Server.ReadTimeout.D(),
		CloseOnShutdown:               true,
		ConnState:                     s.conns.state,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		// A parse error's message must not quote the request: it goes
		// into the problem's detail and the debug log, and the request's
		// headers may hold credentials.
		SecureErrorLogMessage: true,
		Logger:                fasthttpLogger{s.log},
	}
	s.adminSrv = &fasthttp.Server{
		Handler:               s.handleAdmin,
		ErrorHandler:          adminParseError,
		NoDefaultServerHeader: true,
		ReadTimeout:           30 * time.Second,
		IdleTimeout:           30 * time.Second,
		CloseOnShutdown:       true,
		ConnState:             s.adminConns.state,
		SecureErrorLogMessage: true,
		Logger:                fasthttpLogger{s.log},
	}
	return s, nil
}

// Config returns the config in force now.
func (s *Server) Config() *config.Config { return s.table.Load().cfg }

// Apply swaps in a new config. Requests already running finish on the
// table they started with. Listener addresses and server limits take
// effect only on restart; Apply logs when they differ. A config that does
// not build changes nothing, not even a gauge.
func (s *Server) Apply(cfg *config.Config) error {
	if cfg.Admin.Token == "" && s.adminExposed.Load() {
		return &config.FieldError{Path: "admin.token", Msg: "the admin listener stays bound beyond localhost until a restart; a reload cannot remove its token"}
	}
	// Compiled apart first: building the table in force starts the new
	// breakers (setting their upstreams' breaker gauges to closed) and
	// upstream pools (registering cool-down gauges), which a config
	// refused by a later route must not leave behind.
	if err := Check(cfg); err != nil {
		return err
	}
	t, err := s.buildTable(cfg)
	if err != nil {
		return err
	}
	// The board learns the new routes before the swap: a request still
	// running on a route cfg removes then records into a window the
	// board does not keep (never bringing the route back), and the first
	// requests on a route cfg adds find theirs.
	s.status.board.Retain(t.boardNames())
	old := s.table.Swap(t)
	s.limiters.sweep()
	s.ups.sweep()
	s.health.sweep()
	s.m.retain(t)
	s.trails.setInterval(cfg.Log.FlushInterval.D())
	if old != nil {
		if keys := restartOnlyChanges(old.cfg, cfg); len(keys) > 0 {
			s.log.Warn("listen addresses, server limits, procs and state change only on restart; the running ones stay in force",
				"changed", keys)
		}
	}
	return nil
}

// restartOnlyChanges names the keys that differ between a and b among
// those a reload cannot apply: the listeners, server limits, procs and the
// state store (opened at start-up).
func restartOnlyChanges(a, b *config.Config) []string {
	var keys []string
	for _, k := range []struct {
		name    string
		changed bool
	}{
		{"listen", a.Listen != b.Listen},
		{"admin.listen", a.Admin.Listen != b.Admin.Listen},
		{"server", a.Server != b.Server},
		{"procs", a.Procs != b.Procs},
		{"state", a.State != b.State},
	} {
		if k.changed {
			keys = append(keys, k.name)
		}
	}
	return keys
}

// startBackground starts, once, the work a serving ballast does besides
// requests: the state sweeper, the agent watch, and resuming the async
// jobs a previous process left pending. A Server that is built but never
// served starts no goroutine.
func (s *Server) startBackground() {
	s.bgOnce.Do(func() {
		bg, cancel := context.WithCancel(context.Background())
		s.bgCancel, s.bgDone = cancel, make(chan struct{})
		st := s.state.(*timedStore).Store
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); s.agents.run(bg) }()
		if s.shared != nil {
			wg.Add(3)
			go func() { defer wg.Done(); s.shared.watch(bg, policy.SystemClock{}) }()
			go func() { defer wg.Done(); s.syncCooldowns(bg, 200*time.Millisecond) }()
			// A replica that died leaves its jobs leased until the lease
			// runs out; whichever replica looks next takes them over.
			go func() { defer wg.Done(); s.adoptJobs(bg, store.DefaultJobLease) }()
			if f, ok := st.(*failoverStore); ok && f.sh.failOpen {
				// What an outage left in the local store goes to Redis
				// once it answers again.
				wg.Add(1)
				go func() { defer wg.Done(); f.reconcile(bg) }()
			}
		}
		go func() {
			defer close(s.bgDone)
			defer wg.Wait()
			// The sweeper paces itself on the wall clock: its timer is
			// housekeeping, not a decision a test needs to step through.
			store.RunSweeper(bg, st, wallPaced{s.clock}, s.sweepEvery, func(n int, err error) {
				if err != nil {
					s.log.Warn("state sweep failed", "error", err.Error())
				}
			})
		}()
		s.resumeJobs()
	})
}

// Serve accepts agent connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	started := s.serving.add(ln, func() {
		s.startBackground()
		s.ready.Store(true)
		s.status.start()
	})
	if !started {
		return nil // shut down before it began
	}
	defer s.serving.served.Done()
	err := s.srv.Serve(rawio.Listener{Listener: ln, Stop: &s.conns.stop, Short: s.acceptShort("agent", ln)})
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// ErrAdminExposed is ServeAdmin's refusal of a listener beyond loopback
// while admin.token is empty.
var ErrAdminExposed = errors.New("proxy: an admin listener beyond localhost requires admin.token")

// ServeAdmin serves the admin endpoints on ln until Shutdown. A listener
// bound beyond loopback needs admin.token, whatever admin.listen says (an
// embedder's listener, a "localhost" that resolves elsewhere): without a
// token ServeAdmin closes ln and returns ErrAdminExposed, for the Host and
// Origin checks that guard a tokenless listener stop browsers only, not a
// client on the network. A reload cannot remove the token afterwards.
func (s *Server) ServeAdmin(ln net.Listener) error {
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		s.adminExposed.Store(true) // before the check: from now on a reload keeps the token
		if s.Config().Admin.Token == "" {
			_ = ln.Close()
			return fmt.Errorf("%w (listening on %s)", ErrAdminExposed, ln.Addr())
		}
	}
	if !s.adminServing.add(ln, nil) {
		return nil
	}
	defer s.adminServing.served.Done()
	err := s.adminSrv.Serve(rawio.Listener{Listener: ln, Stop: &s.adminConns.stop, Short: s.acceptShort("admin", ln)})
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Shutdown makes /readyz fail, stops accepting, closes the connections
// that wait for a request, and waits for in-flight requests and async
// jobs until ctx ends. What still runs then is called off (its upstream
// connections closed): a streamed answer ends and its line says
// "stopped":"shutting_down"; a call still waiting on its upstream, or
// whose answer is being read ahead to be stored, is answered 503
// shutting_down, its line saying so, and keeps its idempotency claim (its
// outcome is unknown); an async job fails, saying why, or, on a state
// backend that outlives the process, stays pending to resume after a
// restart. Shutdown waits up to a second more for that. The admin listener
// stops next, then the state store closes (writing what it has queued),
// and the alert notifier last: it delivers the alerts still queued,
// those the drain's last requests and the store's final writes raised
// included, until ctx ends or a delivery fails, and logs how many it
// dropped. Shutdown returns ctx's error when ctx ended before all that
// had finished.
//
// With shutdown_delay set, all that begins only once the delay has passed
// (or ctx ended): until then /readyz fails but ballast accepts and serves
// as usual, each answer saying Connection: close (see waitDelay). To cut
// the delay short, end ctx, or call Shutdown again: only the first call
// waits for it, and a later one ends it.
//
// Calls run one at a time: a later call waits for the one running to
// return (or its own ctx to end: it then returns ctx's error) before it
// goes over what is left, which is nothing once one call has finished.
func (s *Server) Shutdown(ctx context.Context) error {
	first := s.draining.CompareAndSwap(false, true)
	s.ready.Store(false) // /readyz fails from here on
	if !first {
		s.cutDelay()
	}
	select {
	case s.shutdownTurn <- struct{}{}: // free: taken even if ctx has ended
	default:
		select {
		case s.shutdownTurn <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer func() { <-s.shutdownTurn }()
	if first {
		s.waitDelay(ctx)
	}
	// Stop accepting first: a request that reached ballast before is
	// answered, one sent later never read (see conns); an agent that
	// dials now is refused, and knows its request was not sent.
	s.serving.close()
	s.ready.Store(false) // again: a Serve begun during the delay set it
	s.drainStop()
	s.conns.drain(ctx)
	s.serving.wait(ctx) // fasthttp's drain then ends at once
	err := s.srv.ShutdownWithContext(ctx)
	if errors.Is(err, net.ErrClosed) {
		err = nil // its listeners, closed already
	}
	streamsDone := make(chan struct{})
	go func() { s.streams.Wait(); close(streamsDone) }()
	select {
	case <-streamsDone:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	s.jobs.mu.Lock()
	s.jobs.stopped = true
	s.jobs.mu.Unlock()
	jobsDone := make(chan struct{})
	go func() { s.jobs.wg.Wait(); close(jobsDone) }()
	select { // running jobs get until ctx ends
	case <-jobsDone:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	if ctx.Err() != nil {
		// fasthttp leaves the connections still active as they are: the
		// streams still relayed are called off (their upstream reads
		// return at once, even from a silent upstream) and their lines
		// written, "stopped":"shutting_down", and so are the calls and
		// async jobs still running (agentWatch.halt); the exit waits a
		// second at most for that.
		ended := s.live.stop()
		s.agents.halt()
		s.hijacked.Range(func(c, _ any) bool { _ = c.(net.Conn).Close(); return true })
		grace, stop := context.WithTimeout(context.Background(), time.Second)
		for _, done := range []<-chan struct{}{ended, streamsDone, jobsDone} {
			select {
			case <-done:
			case <-grace.Done():
			}
		}
		s.conns.halt()       // requests still arriving are answered 503
		s.conns.quiet(grace) // the calls called off have answered, their lines written
		stop()
	}
	s.adminServing.close()
	s.adminConns.drain(ctx)
	if ctx.Err() != nil {
		// An admin request still arriving is answered 503 too, rather
		// than left reading until the admin read timeout (30s) after
		// Shutdown returned; it was cut off, so Shutdown says so even
		// when the halt closed every connection before fasthttp looked.
		if err == nil {
			err = ctx.Err()
		}
		s.adminConns.halt()
		grace, stop := context.WithTimeout(context.Background(), time.Second)
		s.adminConns.quiet(grace)
		stop()
	}
	s.adminServing.wait(ctx)
	if aerr := s.adminSrv.ShutdownWithContext(ctx); err == nil && !errors.Is(aerr, net.ErrClosed) {
		err = aerr
	}
	// A reload that began before the drain (a SIGHUP, a file change)
	// finishes before what it builds on is closed; later ones change
	// nothing (Reload).
	s.reloadMu.Lock()
	s.reloadMu.Unlock() //nolint:staticcheck // a barrier: nothing to guard
	s.ups.closeIdle()
	settled := make(chan struct{})
	go func() { s.settling.Wait(); close(settled) }()
	select { // keyed answers being recorded: each has a deadline of its own
	case <-settled:
	case <-ctx.Done():
	}
	s.bgOnce.Do(func() {}) // never start it after this
	if s.bgCancel != nil {
		s.bgCancel()
		<-s.bgDone
	}
	if cerr := s.state.Close(); cerr != nil {
		s.stateCloseFailed(cerr)
		if err == nil {
			err = cerr
		}
	}
	// Every request has ended: its trail lines go out now, not after a
	// wait on the webhook below that a kill at the deadline would cut.
	s.trails.close()
	// The notifier closes after everything that raises alerts: the state
	// store's final flush (a write the disk refuses raises state_failing),
	// the keyed answers recorded above, the drain's last requests and
	// jobs. It delivers what they queued, within ctx.
	if nerr := s.closeAlerts(ctx); err == nil {
		err = nerr
	}
	if s.ownSink {
		s.sink.Close(time.Second)
	}
	return err
}

// closeAlerts closes the alert notifier, which first delivers the alerts
// still queued (see supervise.Notifier.Close), and logs how many it had to
// drop: /status, which counts them, is no longer served, so the log is
// the only place left that can say an alert was lost.
func (s *Server) closeAlerts(ctx context.Context) error {
	before := s.status.notifier.Stats().Dropped
	err := s.status.close(ctx)
	if n := s.status.notifier.Stats().Dropped - before; n > 0 {
		s.log.Warn("alerts dropped at shutdown: not sent before the shutdown deadline, or given up after a failed delivery",
			"dropped", n)
	}
	return err
}

// waitDelay waits out shutdown_delay, or until ctx ends (the shutdown
// deadline, a second SIGTERM) or another Shutdown call begins, on
// s.clock. Meanwhile nothing is stopped: the listener accepts, requests,
// waits and jobs run as usual, for an agent in the same pod that got its
// SIGTERM with ballast's and finishes its task in its own grace period.
// Only /readyz fails (load balancers stop sending), a reload is refused,
// and every answer says Connection: close (closeWhenDraining), as
// Envoy's drain does: the agent's next call dials anew, and when the
// delay is over a dial is refused, which tells it nothing was sent,
// rather than being sent on a kept-alive connection as the drain closes
// it.
//
// The delay does not end when no agent connection is open: an agent
// between two calls (running a tool, or whose HTTP client closed its idle
// connections) holds none, and its next call would be refused.
func (s *Server) waitDelay(ctx context.Context) {
	d := s.Config().ShutdownDelay.D()
	if d <= 0 {
		return
	}
	s.log.Info("shutdown delay: still serving, /readyz failing", "shutdown_delay", d.String())
	t := s.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		s.log.Info("shutdown delay over: draining")
	case <-ctx.Done():
		s.log.Warn("shutdown delay cut short: draining", "error", ctx.Err().Error())
	case <-s.delayCut.Done():
		s.log.Warn("shutdown delay cut short: draining", "error", "Shutdown called again")
	}
}

// FlushAccessLog writes the decision-trail lines still buffered (see
// log.flush_interval) to Options.AccessLog now, and waits (at most 5s)
// until they have reached it.
func (s *Server) FlushAccessLog() {
	s.trails.Flush()
	s.sink.Flush(5 * time.Second)
}

// handle is the agent-facing request handler.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	defer s.closeWhenDraining(ctx)
	start := ctx.Time() // fasthttp read the clock when the request arrived
	if start.IsZero() {
		start = time.Now()
	}
	s.ids.assign(ctx)
	// Every answer goes out as soon as it is written. fasthttp keeps an
	// answer in its write buffer while the agent's next, pipelined
	// request is buffered (server.go in fasthttp v1.78.0, the "Only flush
	// the writer if we don't have another request in the pipeline"
	// branch), so it waited for that request's upstream too. A deadline
	// set by the handler makes fasthttp flush; the zero time sets none.
	_ = ctx.SetWriteDeadline(time.Time{})
	if s.refuseEarly(ctx, start) {
		return
	}
	if bytes.HasPrefix(ctx.Path(), []byte(jobsPath)) && (ctx.IsGet() || ctx.IsHead()) {
		s.handleJob(ctx)
		s.unmatched.observe(ctx.Response.StatusCode(), time.Since(start).Seconds())
		return
	}
	t := s.table.Load()
	r := t.match(ctx.Host(), ctx.Path(), ctx.Method())
	if r == nil {
		writeProblem(ctx, problem{Status: fasthttp.StatusNotFound, Reason: ReasonNoRoute,
			Detail: fmt.Sprintf("no route matches %s %s (host %q)", ctx.Method(), ctx.Path(), ctx.Host())})
		s.unrouted(ctx, start)
		return
	}
	if seg := r.climbingSegment(ctx.Path()); seg != nil {
		writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Route: r.name,
			Detail: fmt.Sprintf("the path segment %q would climb above the route's prefix on an upstream that drops ';' path parameters or reads '\\' as '/' (Tomcat, IIS): ballast refuses it", seg)})
		s.unrouted(ctx, start)
		return
	}
	r.m.inflight.Inc()
	tr := trailPool.Get().(*trail)
	tr.start = start
	tr.debug = t.cfg.Admin.AllowDebug && string(ctx.Request.Header.Peek(headerDebug)) == "1"
	ctx.SetUserValue(trailKey, tr)
	s.forward(ctx, r, s.clockAt(start))
	if !tr.recorded {
		s.recordAnswered(ctx, r)
	}
	stream, _ := ctx.Response.BodyStream().(*relayBody)
	s.closeDelimited(ctx)
	r.m.inflight.Dec()
	if tr.debug {
		var buf [512]byte
		ctx.Response.Header.SetBytesV(headerTrail, tr.summary(buf[:0]))
	}
	ctx.RemoveUserValue(trailKey)
	end := time.Now()
	if stream != nil {
		s.holdTrail(ctx, tr, stream, r.name, t.cfg.Log) // written when the stream ends
	} else {
		s.finishTrail(ctx, tr, r.name, t.cfg.Log, end)
	}
	r.m.observe(ctx.Response.StatusCode(), end.Sub(start).Seconds())
}

// closeWhenDraining ends the connection of an answer given once Shutdown
// has begun, its shutdown_delay included (see waitDelay). fasthttp does
// so only once its own drain has begun, after Shutdown has closed the
// idle connections (see conns): an answer given in between would invite
// the agent's next request on a connection about to close.
func (s *Server) closeWhenDraining(ctx *fasthttp.RequestCtx) {
	if s.draining.Load() {
		ctx.SetConnectionClose()
	}
}

// refuseEarly answers, before any routing, the requests ballast never
// forwards: an unsafe header block, an HTTP version it does not speak,
// CONNECT and TRACE, and the OPTIONS requests that are its own to answer.
// It reports whether it answered.
func (s *Server) refuseEarly(ctx *fasthttp.RequestCtx, start time.Time) bool {
	if why := unsafeHeaderBlock(&ctx.Request.Header); why != "" {
		writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Detail: why})
		ctx.SetConnectionClose()
		s.unrouted(ctx, start)
		return true
	}
	if why := badTarget(ctx); why != "" {
		writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Detail: why})
		s.unrouted(ctx, start)
		return true
	}
	if v := ctx.Request.Header.Protocol(); len(v) > 5 && v[5] != '1' {
		// fasthttp reads any HTTP/x.y as 1.x; nginx refuses other majors.
		status, detail := fasthttp.StatusHTTPVersionNotSupported, "ballast speaks HTTP/1.1 and HTTP/1.0 to agents, not "+string(v)
		if v[5] == '0' {
			status, detail = fasthttp.StatusBadRequest, "ballast does not serve "+string(v)+" requests"
		}
		writeProblem(ctx, problem{Status: status, Reason: ReasonBadRequest, Detail: detail})
		ctx.SetConnectionClose()
		s.unrouted(ctx, start)
		return true
	}
	switch {
	case ctx.IsConnect():
		// Tunnels would carry bytes ballast cannot see or protect.
		writeProblem(ctx, problem{Status: fasthttp.StatusMethodNotAllowed, Reason: ReasonBadRequest,
			Allow:  allowedMethods,
			Detail: "ballast does not tunnel CONNECT; send plain-HTTP tool calls through HTTP_PROXY, or point the client at a route's base URL"})
		s.unrouted(ctx, start)
		return true
	case ctx.IsTrace():
		// An upstream that implements TRACE echoes the request it got,
		// with the credentials the route's header rules added.
		writeProblem(ctx, problem{Status: fasthttp.StatusMethodNotAllowed, Reason: ReasonBadRequest,
			Allow:  allowedMethods,
			Detail: "ballast does not forward TRACE: the upstream's echo would show the credentials the route adds"})
		s.unrouted(ctx, start)
		return true
	case ctx.IsOptions() && (string(ctx.Request.Header.RequestURI()) == "*" || string(ctx.Request.Header.Peek("Max-Forwards")) == "0"):
		// OPTIONS * asks about ballast itself, and Max-Forwards: 0 makes
		// ballast the final recipient (RFC 9110 §7.6.2, §9.3.7): answered
		// here, never forwarded.
		ctx.Response.Header.Set("Allow", allowedMethods)
		ctx.Response.Header.SetContentLength(0)
		s.unrouted(ctx, start)
		return true
	}
	return false
}

// unrouted counts, and logs with route "_unmatched", a request ballast
// answered before any route took it (no route, or refused before routing),
// the way a route's requests are counted and logged.
func (s *Server) unrouted(ctx *fasthttp.RequestCtx, start time.Time) {
	end := time.Now()
	tr := trailPool.Get().(*trail)
	tr.start = start
	s.finishTrail(ctx, tr, unmatchedRoute, s.table.Load().cfg.Log, end)
	s.unmatched.observe(ctx.Response.StatusCode(), end.Sub(start).Seconds())
}

// unmatchedRoute is the route label and trail route of requests no route
// took.
const unmatchedRoute = "_unmatched"

// allowedMethods is the Allow of ballast's own answers about methods.
const allowedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

// handleParseError answers requests fasthttp could not parse.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	s.ids.assign(ctx)
	p := problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Detail: "malformed request: " + redactRequestBytes(err.Error())}
	var se *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &se) || strings.Contains(err.Error(), "small read buffer"):
		p.Status, p.Reason = fasthttp.StatusRequestHeaderFieldsTooLarge, ReasonHeadersTooLarge
		p.Detail = "the request line and headers are larger than server.max_header_bytes"
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		p.Status, p.Reason = fasthttp.StatusRequestEntityTooLarge, ReasonBodyTooLarge
		p.Detail = "the request body is too large"
	case errors.Is(err, rawio.ErrBareLFHead):
		p.Detail = "malformed request: its header block ends in a bare LF; ballast needs CRLF line endings (RFC 9112 §2.2)"
	}
	var ne net.Error
	cut := false // the agent was still sending: its line is written
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		p.Status, p.Detail = fasthttp.StatusRequestTimeout, "the request was not received in time"
		cut = true
	case errors.Is(err, rawio.ErrHalted):
		// Shutdown's drain ran out of time with the head still arriving
		// (conns.halt): answered, so that the agent sends it elsewhere.
		p.Status, p.Reason = fasthttp.StatusServiceUnavailable, ReasonShuttingDown
		p.Detail = "ballast is shutting down, and its drain ran out of time before the request arrived; nothing was sent upstream"
		cut = true
	}
	writeProblem(ctx, p)
	ctx.SetConnectionClose()
	if cut {
		end := time.Now()
		tr := trailPool.Get().(*trail)
		tr.start = end
		if p.Reason == ReasonShuttingDown {
			tr.stop = ReasonShuttingDown
		}
		s.finishTrail(ctx, tr, unmatchedRoute, s.table.Load().cfg.Log, end)
	}
	s.unmatched.observe(p.Status, 0)
}

// unsafeHeaderBlock inspects the raw request header block in one pass and
// says what makes the request unsafe to forward, or "" when nothing does:
//   - a Transfer-Encoding together with a Content-Length, or any
//     Transfer-Encoding but chunked (RFC 9112 §6.3): the two ends of a
//     connection could disagree on where the body ends (request
//     smuggling). fasthttp lets chunked win over Content-Length and reads
//     no body at all for "identity";
//   - a field name that is not a token (RFC 9110 §5.1): fasthttp accepts
//     inner spaces, which an upstream may read differently.
//
// The answer names the header, never its value.
func unsafeHeaderBlock(h *fasthttp.RequestHeader) string {
	var sawCL, sawTE bool
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			continue // a folded continuation line
		}
		name := line[:colon]
		if bytes.IndexByte(name, ' ') >= 0 {
			return fmt.Sprintf("the header name %q is not a token (RFC 9110 §5.1)", name)
		}
		switch name[0] | 0x20 {
		case 'c':
			sawCL = sawCL || asciiEqualFold(name, []byte("content-length"))
		case 't':
			sawTE = sawTE || asciiEqualFold(name, []byte("transfer-encoding"))
		}
	}
	switch {
	case sawTE && sawCL:
		return "the request has both Content-Length and Transfer-Encoding; its framing is ambiguous"
	case sawTE && h.ContentLength() != -1: // -1: chunked
		return "the request's Transfer-Encoding is not chunked; its framing is ambiguous"
	}
	return ""
}

// fasthttpLogger routes fasthttp's own messages into slog at debug level.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp: " + redactRequestBytes(fmt.Sprintf(format, args...)))
}

// badTarget names what makes a request's target or Host unusable for
// routing, or returns "".
func badTarget(ctx *fasthttp.RequestCtx) string {
	rt := ctx.Request.Header.RequestURI()
	switch {
	case len(rt) > 1 && rt[0] == '/' && rt[1] == '/' && bytes.Contains(rt, []byte("://")):
		// RFC 9112 §3.2.1: a path; fasthttp would read its first segment as the host.
		return "a request target starting with // is a path, and this one would be read as an authority"
	case bytes.IndexByte(ctx.Request.Header.Host(), '@') >= 0:
		return "the Host header must not carry userinfo"
	case len(ctx.Host()) == 0 && len(rt) > 0 && rt[0] != '/':
		return "an absolute request target must name a host" // RFC 9110 §4.2.1
	}
	return ""
}
