package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
)

// statusBoard is the Server's supervision surface: the per-route and
// per-upstream windows and failure ring behind /status and the status
// page, and the alert notifier.
type statusBoard struct {
	board    *supervise.Board
	notifier *supervise.Notifier
	page     *supervise.Page
	log      *slog.Logger
	hooks    atomic.Pointer[statusHooks]
	host     string // this replica's hostname, named in its alerts

	mu   sync.Mutex
	seen *config.Config // the config the notifier was last configured from
}

// statusHooks fill the parts of /status that other subsystems own. Each
// may be nil; a nil hook or a nil result omits the section.
type statusHooks struct {
	// cache reports a route's response cache.
	cache func(r *route) *supervise.CacheStatus
	// jobs reports the async job queue.
	jobs func(now time.Time) *supervise.JobsStatus
}

func newStatusBoard(cfg *config.Config, clock policy.Clock, log *slog.Logger) *statusBoard {
	b := &statusBoard{
		board:    supervise.NewBoard(),
		notifier: supervise.NewNotifier(nil, supervise.NotifierConfig{}, clock, log),
		page:     supervise.NewPage(),
		log:      log,
	}
	b.host, _ = os.Hostname() // empty when unknown: alerts then name no host
	b.configure(cfg)
	return b
}

// setHooks installs the hooks that fill /status's optional sections. It is
// safe to call at any time.
func (b *statusBoard) setHooks(h statusHooks) { b.hooks.Store(&h) }

// configure points the notifier at cfg's notify block, once per config
// generation. A reload that changes notify.* takes effect at the next
// alert or /status read.
func (b *statusBoard) configure(cfg *config.Config) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cfg == nil || cfg == b.seen {
		return
	}
	n := cfg.Notify
	if b.seen != nil && b.seen.Notify == n {
		b.seen = cfg
		return
	}
	b.seen = cfg
	var sender supervise.Sender
	if n.Webhook != "" {
		w, err := supervise.NewWebhook(n.Webhook)
		if err != nil {
			b.log.Warn("alerts are off: notify.webhook is not usable", "err", err) // err never holds the URL
		} else {
			sender = w
		}
	}
	b.notifier.Configure(sender, supervise.NotifierConfig{DedupWindow: n.DedupWindow.D(), MaxPerMinute: n.MaxPerMinute, Host: b.host})
}

// start launches the alert sender; close stops it.
func (b *statusBoard) start() { b.notifier.Start() }

func (b *statusBoard) close(ctx context.Context) error { return b.notifier.Close(ctx) }

// handleStatus serves GET /status: the supervision snapshot as JSON.
// It answers only authorized requests (see authorize).
func (s *Server) handleStatus(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		writeProblem(ctx, problem{Status: fasthttp.StatusMethodNotAllowed, Reason: ReasonBadRequest, Allow: "GET, HEAD", Detail: "use GET /status"})
		return
	}
	if !s.authorize(ctx, true) {
		return
	}
	b, err := json.Marshal(s.snapshot())
	if err != nil {
		ctx.Error("proxy: encoding /status: "+err.Error(), fasthttp.StatusInternalServerError)
		return
	}
	h := &ctx.Response.Header
	h.SetContentType("application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBody(append(b, '\n'))
}

// snapshot assembles /status from the current route table.
func (s *Server) snapshot() *supervise.Snapshot {
	now := s.clock.Now()
	t := s.table.Load()
	st := s.status
	st.configure(t.cfg)
	hooks := st.hooks.Load()
	if hooks == nil {
		hooks = &statusHooks{}
	}
	snap := &supervise.Snapshot{
		Time:          now,
		WindowSeconds: supervise.WindowSeconds,
		Routes:        make([]supervise.RouteStatus, 0, len(t.routes)),
		Failures:      st.board.Failures().Snapshot(faultText),
	}
	for _, r := range t.routes {
		rb := st.board.Route(r.name)
		rs := supervise.RouteStatus{Name: r.name, Stats: rb.Stats(now), Series: rb.Series(now), Limiter: limiterStatus(r)}
		rs.InFlight = int64(gaugeValue(r.m.inflight))
		for i, tg := range r.targets {
			u := rb.Upstream(tg.name)
			us := supervise.UpstreamStatus{Name: tg.name, Role: "primary", Stats: u.Stats(now)}
			if i > 0 {
				us.Role = "fallback"
			}
			us.InFlight = u.InFlight()
			us.Breaker = "disabled"
			if b := tg.health.breaker; b != nil {
				us.Breaker = b.State(now).String()
			}
			us.CooldownRemainingS = float64(tg.up.cool.Longest(now).Milliseconds()) / 1000
			if f, ok := u.LastFault(); ok {
				us.LastFailure = lastFailure(&f)
			}
			rs.Upstreams = append(rs.Upstreams, us)
		}
		if hooks.cache != nil {
			rs.Cache = hooks.cache(r)
		}
		rs.Health = supervise.RouteHealth(&rs)
		snap.Routes = append(snap.Routes, rs)
	}
	sort.Slice(snap.Routes, func(i, j int) bool { return snap.Routes[i].Name < snap.Routes[j].Name })
	if hooks.jobs != nil {
		snap.Jobs = hooks.jobs(now)
	}
	if st.notifier.Enabled() {
		a := st.notifier.Stats()
		snap.Alerts = &a
	}
	return snap
}

// limiterStatus reports a route's rate limit and bulkhead; nil when it has
// neither.
func limiterStatus(r *route) *supervise.LimiterStatus {
	if r.limit == nil && r.bulkhead == nil {
		return nil
	}
	ls := &supervise.LimiterStatus{Name: r.name}
	if r.limit != nil {
		ls.Name = r.limit.name
		if r.limit.requests != nil {
			rs := r.limit.requests.Stats()
			ls.EffectiveRPS, ls.Limited = rs.Rate, rs.Limited
		}
	}
	if r.bulkhead != nil {
		ls.QueueDepth = r.bulkhead.Stats().Queued
	}
	return ls
}

// gaugeValue reads a gauge's current value (0 when it cannot).
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if g == nil || g.Write(&m) != nil || m.Gauge == nil {
		return 0
	}
	return m.Gauge.GetValue()
}
