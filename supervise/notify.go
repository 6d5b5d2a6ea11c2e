package supervise

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Sender delivers one alert body. It must honour ctx's deadline and must
// not put secrets (the webhook URL) in its errors: they are logged.
type Sender interface {
	Send(ctx context.Context, body []byte) error
}

// NotifierConfig tunes a Notifier. The zero value of each field means its
// default.
type NotifierConfig struct {
	// DedupWindow: events of the same kind, route and upstream within it
	// collapse into one; the next one sent carries the count. Default 10m.
	DedupWindow time.Duration
	// MaxPerMinute caps the events sent in any minute. Default 10.
	MaxPerMinute int
	// QueueSize bounds the events waiting for the sender; when it is full,
	// new events are dropped (and counted). Default 64.
	QueueSize int
	// Timeout bounds one delivery. Default 5s.
	Timeout time.Duration
	// Host is set as the Host of every event that has none: the replica
	// sending it. Empty: none.
	Host string
}

func (c NotifierConfig) withDefaults() NotifierConfig {
	if c.DedupWindow <= 0 {
		c.DedupWindow = 10 * time.Minute
	}
	if c.MaxPerMinute <= 0 {
		c.MaxPerMinute = 10
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 64
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	return c
}

// NotifyStats counts what became of alert events, for /status.
type NotifyStats struct {
	// Sent were delivered (the webhook answered 2xx).
	Sent uint64 `json:"sent"`
	// Failed were tried and not delivered (error, timeout, non-2xx).
	Failed uint64 `json:"failed"`
	// Suppressed were duplicates inside the dedup window.
	Suppressed uint64 `json:"suppressed"`
	// RateLimited exceeded max_per_minute.
	RateLimited uint64 `json:"rate_limited"`
	// Dropped found the queue full, were raised after Close, or were
	// still queued when Close gave up (see Close).
	Dropped uint64 `json:"dropped"`
}

type eventKey struct {
	kind            Kind
	route, upstream string
}

type keyState struct {
	last       time.Time // when the last event of this key was queued
	queued     bool      // last is set
	suppressed int       // events not sent since then
}

// Notifier turns alert events into webhook deliveries: deduplicated, rate
// limited, and sent asynchronously by one goroutine, so Notify never
// blocks the request path. Dedup and rate decisions read the injected
// clock. Start launches the sender; Close stops it.
//
// A Notifier without a Sender (Configure with nil) accepts and ignores
// every event.
type Notifier struct {
	clock policy.Clock
	log   *slog.Logger
	queue chan Event

	mu     sync.Mutex
	cfg    NotifierConfig
	sender Sender
	keys   map[eventKey]*keyState
	sent   []time.Time // ring of the last MaxPerMinute queue times
	sentAt int         // next slot of sent

	nSent, nFailed, nSuppressed, nRateLimited, nDropped atomic.Uint64

	// closed (under mu) is set by Close: events from then on are dropped,
	// so what Close delivers is a queue that only shrinks.
	closed bool

	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
	stop      chan struct{}
	done      chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
}

// NewNotifier returns a Notifier that sends through sender (nil: alerts
// off). QueueSize is fixed here; Configure may change the rest later.
func NewNotifier(sender Sender, cfg NotifierConfig, clock policy.Clock, log *slog.Logger) *Notifier {
	cfg = cfg.withDefaults()
	if clock == nil {
		clock = policy.SystemClock{}
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{
		clock: clock, log: log,
		queue: make(chan Event, cfg.QueueSize),
		keys:  map[eventKey]*keyState{},
		stop:  make(chan struct{}), done: make(chan struct{}),
		ctx: ctx, cancel: cancel,
	}
	n.Configure(sender, cfg)
	return n
}

// Configure replaces the sender (nil: alerts off) and the dedup, rate and
// timeout settings. The queue size stays as built. Dedup state is kept.
func (n *Notifier) Configure(sender Sender, cfg NotifierConfig) {
	cfg = cfg.withDefaults()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sender = sender
	if cfg.MaxPerMinute != n.cfg.MaxPerMinute {
		n.sent, n.sentAt = make([]time.Time, cfg.MaxPerMinute), 0
	}
	n.cfg = cfg
}

// Enabled reports whether a sender is configured.
func (n *Notifier) Enabled() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sender != nil
}

// maxKeys bounds the dedup table; past it, expired keys are pruned.
const maxKeys = 1024

// Notify queues e for delivery unless it duplicates one queued within the
// dedup window, the per-minute cap is reached, or the queue is full; it
// reports whether e was queued. It never blocks on delivery. e.Time, when
// zero, is set from the clock; Source, Suppressed and Text are filled in.
func (n *Notifier) Notify(e Event) bool {
	now := n.clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sender == nil {
		return false
	}
	if n.closed {
		n.nDropped.Add(1)
		return false
	}
	k := eventKey{e.Kind, e.Route, e.Upstream}
	st := n.keys[k]
	if st == nil {
		if len(n.keys) >= maxKeys {
			n.pruneLocked(now)
		}
		st = &keyState{}
		n.keys[k] = st
	}
	if st.queued && now.Sub(st.last) < n.cfg.DedupWindow {
		st.suppressed++
		n.nSuppressed.Add(1)
		return false
	}
	if oldest := n.sent[n.sentAt]; !oldest.IsZero() && now.Sub(oldest) < time.Minute {
		st.suppressed++
		n.nRateLimited.Add(1)
		return false
	}
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Source = "ballast"
	if e.Host == "" {
		e.Host = n.cfg.Host
	}
	e.Suppressed = st.suppressed
	e.Text = e.summary()
	select {
	case n.queue <- e:
	default:
		st.suppressed++
		n.nDropped.Add(1)
		return false
	}
	st.last, st.queued, st.suppressed = now, true, 0
	n.sent[n.sentAt] = now
	n.sentAt = (n.sentAt + 1) % len(n.sent)
	return true
}

// pruneLocked forgets keys whose dedup window has passed and that owe no
// suppressed count.
func (n *Notifier) pruneLocked(now time.Time) {
	for k, st := range n.keys {
		if st.suppressed == 0 && (!st.queued || now.Sub(st.last) >= n.cfg.DedupWindow) {
			delete(n.keys, k)
		}
	}
}

// Stats returns the delivery counters.
func (n *Notifier) Stats() NotifyStats {
	return NotifyStats{
		Sent: n.nSent.Load(), Failed: n.nFailed.Load(), Suppressed: n.nSuppressed.Load(),
		RateLimited: n.nRateLimited.Load(), Dropped: n.nDropped.Load(),
	}
}

// Start launches the sender goroutine once. It runs until Close.
func (n *Notifier) Start() {
	n.startOnce.Do(func() {
		select {
		case <-n.stop:
			return // closed before it started
		default:
		}
		n.started.Store(true)
		go n.run()
	})
}

// Close stops the sender once it has delivered the events already queued
// (a delivery in progress included), so that what was raised just before
// — by the last requests of a drain, or by a state store's final flush —
// is still sent. It gives up, and counts what is left as dropped, when ctx
// ends (the delivery in progress is then cancelled, and Close returns
// ctx's error) or as soon as one of those deliveries fails: a webhook that
// fails one would most likely fail the rest too, each after its Timeout.
// So a webhook that is down or does not answer holds Close up for one
// Timeout at most, and never past ctx. Events raised from Close on are
// dropped and counted. Close waits for the sender goroutine to end; it is
// idempotent and safe before Start (the queued events are then dropped).
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.stopOnce.Do(func() { close(n.stop) })
	n.startOnce.Do(func() {}) // a Start after Close must not launch
	if !n.started.Load() {
		n.drain()
		n.cancel()
		return nil
	}
	select {
	case <-n.done:
	default:
		select {
		case <-n.done:
		case <-ctx.Done():
			// Out of time: the delivery in progress is cancelled (a
			// Sender honours its context), the rest dropped.
			n.cancel()
			<-n.done
			return ctx.Err()
		}
	}
	n.cancel()
	return nil
}

func (n *Notifier) run() {
	defer close(n.done)
	for !n.stopping() {
		select {
		case e := <-n.queue:
			if !n.deliver(&e) && n.stopping() {
				n.drain() // it failed as Close began: see flush
				return
			}
		case <-n.stop:
		}
	}
	n.flush()
}

// stopping reports whether Close has been called.
func (n *Notifier) stopping() bool {
	select {
	case <-n.stop:
		return true
	default:
		return false
	}
}

// flush delivers what is queued at Close, until the queue is empty, a
// delivery fails, or Close gives up (n.ctx ends); the rest is dropped.
func (n *Notifier) flush() {
	for {
		select {
		case e := <-n.queue:
			if n.ctx.Err() != nil {
				n.nDropped.Add(1)
				n.drain()
				return
			}
			if !n.deliver(&e) {
				n.drain()
				return
			}
		default:
			return
		}
	}
}

// drain counts the events still queued as dropped.
func (n *Notifier) drain() {
	for {
		select {
		case <-n.queue:
			n.nDropped.Add(1)
		default:
			return
		}
	}
}

// deliver sends e and reports whether it was delivered.
func (n *Notifier) deliver(e *Event) bool {
	n.mu.Lock()
	sender, timeout := n.sender, n.cfg.Timeout
	n.mu.Unlock()
	if sender == nil {
		n.nDropped.Add(1)
		return false
	}
	body, err := json.Marshal(e)
	if err == nil {
		ctx, cancel := context.WithTimeout(n.ctx, timeout)
		err = sender.Send(ctx, body)
		cancel()
	}
	if err != nil {
		n.nFailed.Add(1)
		n.log.Warn("alert delivery failed", "kind", string(e.Kind), "route", e.Route, "upstream", e.Upstream, "err", err)
		return false
	}
	n.nSent.Add(1)
	n.log.Debug("alert sent", "kind", string(e.Kind), "route", e.Route, "upstream", e.Upstream, "suppressed", e.Suppressed)
	return true
}
