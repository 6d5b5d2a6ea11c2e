package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// chanSender hands every body to the test; err, when set, is returned
// after the hand-off.
type chanSender struct {
	bodies chan []byte
	err    error
}

func (s *chanSender) Send(ctx context.Context, body []byte) error {
	select {
	case s.bodies <- body:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// blockingSender blocks until its context ends.
type blockingSender struct{ entered chan struct{} }

func (s *blockingSender) Send(ctx context.Context, _ []byte) error {
	s.entered <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestNotifier(t *testing.T, s Sender, cfg NotifierConfig) (*Notifier, *policy.FakeClock, *syncBuf) {
	t.Helper()
	clock := policy.NewFakeClock(t0)
	logs := &syncBuf{}
	n := NewNotifier(s, cfg, clock, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n, clock, logs
}

// queued drains the notifier's queue without a sender goroutine.
func queued(n *Notifier) []Event {
	var out []Event
	for {
		select {
		case e := <-n.queue:
			out = append(out, e)
		default:
			return out
		}
	}
}

func receive(t *testing.T, s *chanSender) Event {
	t.Helper()
	select {
	case b := <-s.bodies:
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("body is not an Event: %v: %s", err, b)
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery within 5s")
	}
	return Event{}
}

func TestNotifierDeduplicates(t *testing.T) {
	n, clock, _ := newTestNotifier(t, &chanSender{}, NotifierConfig{DedupWindow: 10 * time.Minute, MaxPerMinute: 100})
	breaker := Event{Kind: KindBreakerOpen, Route: "openai", Upstream: "api.openai.com"}
	steps := []struct {
		name    string
		advance time.Duration
		event   Event
		want    bool
	}{
		{"the first event is sent", 0, breaker, true},
		{"a duplicate inside the window is suppressed", time.Minute, breaker, false},
		{"and another", 5 * time.Minute, breaker, false},
		{"another route is another key", 0, Event{Kind: KindBreakerOpen, Route: "anthropic", Upstream: "api.openai.com"}, true},
		{"another kind is another key", 0, Event{Kind: KindCooldown, Route: "openai", Upstream: "api.openai.com"}, true},
		{"after the window it is sent again", 4 * time.Minute, breaker, true},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		if got := n.Notify(s.event); got != s.want {
			t.Fatalf("%s: Notify = %v, want %v", s.name, got, s.want)
		}
	}
	events := queued(n)
	if len(events) != 4 {
		t.Fatalf("queued %d events, want 4", len(events))
	}
	if events[0].Suppressed != 0 || events[3].Suppressed != 2 {
		t.Errorf("suppressed counts %d and %d, want 0 and 2 (the next event carries the duplicates)", events[0].Suppressed, events[3].Suppressed)
	}
	if !events[3].Time.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("event time %v, want the clock's", events[3].Time)
	}
	if events[3].Source != "ballast" || events[3].Text != "ballast: circuit breaker opened on route openai (upstream api.openai.com) [+2 similar suppressed]" {
		t.Errorf("source %q text %q", events[3].Source, events[3].Text)
	}
	if st := n.Stats(); st.Suppressed != 2 {
		t.Errorf("stats %+v, want 2 suppressed", st)
	}
}

func TestNotifierRateLimits(t *testing.T) {
	n, clock, _ := newTestNotifier(t, &chanSender{}, NotifierConfig{MaxPerMinute: 3})
	ev := func(route string) Event { return Event{Kind: KindBudgetExhausted, Route: route} }
	for i, route := range []string{"a", "b", "c"} {
		if !n.Notify(ev(route)) {
			t.Fatalf("event %d refused under the cap", i)
		}
		clock.Advance(10 * time.Second)
	}
	if n.Notify(ev("d")) {
		t.Fatal("a fourth event inside the minute must be rate limited")
	}
	clock.Advance(29 * time.Second) // 59s after the first
	if n.Notify(ev("d")) {
		t.Fatal("still inside the minute of the first event")
	}
	clock.Advance(time.Second) // the first event is a minute old
	if !n.Notify(ev("d")) {
		t.Fatal("a slot freed up a minute after the first event")
	}
	events := queued(n)
	if last := events[len(events)-1]; last.Route != "d" || last.Suppressed != 2 {
		t.Errorf("last event %+v, want route d carrying its 2 rate-limited predecessors", last)
	}
	if st := n.Stats(); st.RateLimited != 2 {
		t.Errorf("stats %+v, want 2 rate limited", st)
	}
}

func TestNotifierDropsWhenQueueFull(t *testing.T) {
	n, _, _ := newTestNotifier(t, &chanSender{}, NotifierConfig{QueueSize: 1, MaxPerMinute: 100})
	if !n.Notify(Event{Kind: KindJobFailed, Route: "a"}) {
		t.Fatal("first event refused")
	}
	done := make(chan bool)
	go func() { done <- n.Notify(Event{Kind: KindJobFailed, Route: "b"}) }()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("a full queue must drop, not queue")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked on a full queue")
	}
	if st := n.Stats(); st.Dropped != 1 {
		t.Errorf("stats %+v, want 1 dropped", st)
	}
}

func TestNotifierWithoutSenderIgnoresEvents(t *testing.T) {
	n, _, _ := newTestNotifier(t, nil, NotifierConfig{})
	if n.Enabled() || n.Notify(Event{Kind: KindBreakerOpen}) {
		t.Fatal("a notifier without a sender must ignore events")
	}
	if st := n.Stats(); st != (NotifyStats{}) {
		t.Errorf("stats %+v, want zero", st)
	}
	n.Configure(&chanSender{}, NotifierConfig{})
	if !n.Enabled() || !n.Notify(Event{Kind: KindBreakerOpen}) {
		t.Fatal("Configure with a sender must enable it")
	}
}

func TestNotifierDelivers(t *testing.T) {
	s := &chanSender{bodies: make(chan []byte, 4)}
	n, _, logs := newTestNotifier(t, s, NotifierConfig{})
	n.Start()
	n.Start() // idempotent
	n.Notify(Event{Kind: KindCooldown, Route: "r", Upstream: "u:1", Detail: "45s"})
	e := receive(t, s)
	if e.Kind != KindCooldown || e.Route != "r" || e.Upstream != "u:1" || e.Detail != "45s" || e.Source != "ballast" {
		t.Errorf("delivered %+v", e)
	}
	closeNow(t, n) // waits for the delivery to finish its bookkeeping
	if st := n.Stats(); st.Sent != 1 {
		t.Errorf("stats %+v, want 1 sent", st)
	}
	if !bytes.Contains([]byte(logs.String()), []byte("alert sent")) {
		t.Errorf("logs: %s", logs.String())
	}
}

func TestNotifierCountsAndLogsFailures(t *testing.T) {
	s := &chanSender{bodies: make(chan []byte, 4), err: errors.New("boom")}
	n, _, logs := newTestNotifier(t, s, NotifierConfig{})
	n.Start()
	n.Notify(Event{Kind: KindBudgetExhausted, Route: "r"})
	receive(t, s)
	closeNow(t, n)
	if st := n.Stats(); st.Failed != 1 {
		t.Errorf("stats %+v, want 1 failed", st)
	}
	if out := logs.String(); !bytes.Contains([]byte(out), []byte("alert delivery failed")) || !bytes.Contains([]byte(out), []byte("boom")) {
		t.Errorf("logs lack the failure: %s", out)
	}
}

// gatedSender blocks each delivery until the test opens the gate or the
// delivery's context ends, and hands the body to the test on entry.
type gatedSender struct {
	entered chan []byte
	gate    chan struct{}
}

func (s *gatedSender) Send(ctx context.Context, body []byte) error {
	s.entered <- body
	select {
	case <-s.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A state store's final flush raises its alert just before the notifier
// closes, and the last requests of a drain theirs just before that. Close
// cancelled the delivery in progress and dropped what was queued, so none
// of them reached the operator. Close delivers them first.
func TestNotifierCloseDeliversWhatIsQueued(t *testing.T) {
	s := &gatedSender{entered: make(chan []byte, 4), gate: make(chan struct{})}
	n, _, _ := newTestNotifier(t, s, NotifierConfig{MaxPerMinute: 100})
	n.Start()
	n.Notify(Event{Kind: KindJobFailed, Route: "a"})
	<-s.entered // in progress
	n.Notify(Event{Kind: KindStateFailing, Route: "b"})
	closed := make(chan error, 1)
	go func() { closed <- n.Close(context.Background()) }()
	<-n.stop // Close has begun
	close(s.gate)
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := n.Stats(); st.Sent != 2 || st.Failed != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want both events sent", st)
	}
	select {
	case body := <-s.entered:
		var second Event
		if err := json.Unmarshal(body, &second); err != nil || second.Kind != KindStateFailing || second.Route != "b" {
			t.Errorf("second delivery %+v, %v; want the queued state_failing event", second, err)
		}
	default:
		t.Error("the queued state_failing event was never sent")
	}
}

// Close is bounded by its context: when it ends, the delivery in progress
// is cancelled, what is still queued is dropped and counted, and Close
// returns the context's error once the sender goroutine has ended.
func TestNotifierCloseGivesUpWhenItsContextEnds(t *testing.T) {
	s := &blockingSender{entered: make(chan struct{}, 1)}
	n, _, _ := newTestNotifier(t, s, NotifierConfig{Timeout: time.Hour, MaxPerMinute: 100})
	n.Start()
	n.Notify(Event{Kind: KindJobFailed, Route: "a"})
	<-s.entered
	n.Notify(Event{Kind: KindJobFailed, Route: "b"}) // stays queued
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close with its context ended = %v, want context.Canceled", err)
	}
	st := n.Stats()
	if st.Failed != 1 || st.Dropped != 1 {
		t.Errorf("stats %+v, want the cancelled delivery failed and the queued one dropped", st)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// A webhook that is down fails every delivery, each after up to Timeout:
// Close tries what is queued until the first failure and drops the rest,
// so a shutdown waits for one failed delivery, not one per event.
func TestNotifierCloseStopsAtTheFirstFailedDelivery(t *testing.T) {
	s := &chanSender{bodies: make(chan []byte, 4), err: errors.New("connection refused")}
	n, _, _ := newTestNotifier(t, s, NotifierConfig{MaxPerMinute: 100})
	for _, route := range []string{"a", "b", "c"} {
		n.Notify(Event{Kind: KindJobFailed, Route: route})
	}
	n.Start()
	closeNow(t, n)
	if st := n.Stats(); st.Failed != 1 || st.Dropped != 2 || st.Sent != 0 {
		t.Errorf("stats %+v, want one failed delivery and the other two dropped", st)
	}
}

// An event raised once Close has begun is never sent: it is counted as
// dropped, and Notify says it was not queued (it used to queue it into a
// queue nobody read any more, and report true).
func TestNotifierDropsEventsAfterClose(t *testing.T) {
	s := &chanSender{bodies: make(chan []byte, 4)}
	n, _, _ := newTestNotifier(t, s, NotifierConfig{})
	n.Start()
	closeNow(t, n)
	if n.Notify(Event{Kind: KindStateFailing}) {
		t.Fatal("Notify after Close reported the event queued")
	}
	if st := n.Stats(); st.Dropped != 1 {
		t.Errorf("stats %+v, want the late event dropped", st)
	}
}

func TestNotifierCloseBeforeStart(t *testing.T) {
	n, _, _ := newTestNotifier(t, &chanSender{}, NotifierConfig{})
	n.Notify(Event{Kind: KindJobFailed})
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.Start() // must not launch a goroutine after Close (goleak checks)
	if st := n.Stats(); st.Dropped != 1 {
		t.Errorf("stats %+v, want the queued event dropped", st)
	}
}

// closeNow closes n, which waits for the sender goroutine to finish the
// delivery it is in.
func closeNow(t *testing.T, n *Notifier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
