package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
)

// heldWebhook is a loopback alert webhook whose first delivery is held
// until the test releases it; it says whether the sender gave up on it.
type heldWebhook struct {
	url       string
	events    chan supervise.Event
	entered   chan struct{} // the first delivery arrived
	release   chan struct{}
	cancelled chan struct{} // the first delivery was called off by the sender
	once      sync.Once
}

func newHeldWebhook(t *testing.T) *heldWebhook {
	t.Helper()
	h := &heldWebhook{events: make(chan supervise.Event, 8), entered: make(chan struct{}),
		release: make(chan struct{}), cancelled: make(chan struct{}, 1)}
	var first sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if json.NewDecoder(r.Body).Decode(&e) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.events <- e
		held := false
		first.Do(func() { held = true })
		if !held {
			return
		}
		close(h.entered)
		select {
		case <-h.release:
		case <-r.Context().Done():
			h.cancelled <- struct{}{}
		}
	}))
	t.Cleanup(func() { h.open(); srv.Close() })
	h.url = srv.URL + "/hook"
	return h
}

func (h *heldWebhook) open() { h.once.Do(func() { close(h.release) }) }

// waitClosed waits until the state store refuses reads because it is
// closed: Shutdown is past the store's Close.
func waitClosed(t *testing.T, s *Server) {
	t.Helper()
	waitUntil(t, func() bool {
		_, err := s.state.GetJob(context.Background(), "no-such-job")
		return errors.Is(err, store.ErrClosed)
	})
}

// lockedLog is a log destination safe for the notifier's goroutine.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLoggedServer is newStatusServer with its log kept in logs.
func newLoggedServer(t *testing.T, yaml string, logs io.Writer) *Server {
	t.Helper()
	return newTrailedServer(t, yaml, logs, io.Discard)
}

// newTrailedServer is newLoggedServer with its access log (the trail)
// kept in trail.
func newTrailedServer(t *testing.T, yaml string, logs, trail io.Writer) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), AccessLog: trail})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// The alerts the drain's last requests and jobs raise (a job that failed
// for good, a breaker that opened on the last call) are queued while an
// earlier one is still being delivered. Shutdown closed the notifier,
// which cancelled that delivery and dropped the queue, so the operator
// heard of neither. Shutdown now lets the notifier deliver both, within
// its deadline.
func TestShutdownAlerts_QueuedAlertsAreDelivered(t *testing.T) {
	hook := newHeldWebhook(t)
	s := newStatusServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: reports, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`, hook.url))
	s.status.start()
	s.alertJobFailed("reports", "job-shutdown-first", "upstream_unavailable")
	select {
	case <-hook.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first alert never reached the webhook")
	}
	s.alert(supervise.KindStateFailing, "reports", "", "the state store refused to record that job is failed")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	waitClosed(t, s)
	hook.open()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-hook.cancelled:
		t.Fatal("Shutdown called off the alert being delivered")
	default:
	}
	<-hook.events // the first
	select {
	case e := <-hook.events:
		if e.Kind != supervise.KindStateFailing || e.Route != "reports" {
			t.Fatalf("second alert %+v; want state_failing on reports", e)
		}
	default:
		t.Fatalf("the alert queued at shutdown was never sent (alerts: %+v)", s.status.notifier.Stats())
	}
	if st := s.status.notifier.Stats(); st.Sent != 2 || st.Dropped != 0 {
		t.Errorf("alerts %+v; want both sent", st)
	}
}

// A webhook that takes alerts and never answers must not hold a shutdown
// past its deadline: the delivery is called off when ctx ends, the rest
// dropped, and the log says how many alerts were lost, since /status no
// longer can.
func TestShutdownAlerts_HungWebhookKeepsTheDeadline(t *testing.T) {
	hook := newHeldWebhook(t) // never released before Shutdown returns
	logs := &lockedLog{}
	s := newLoggedServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: reports, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`, hook.url), logs)
	s.status.start()
	s.alertJobFailed("reports", "job-hung-1", "timeout")
	<-hook.entered
	s.alertJobFailed("other", "job-hung-2", "timeout")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Shutdown(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v; want its deadline's error (the alerts were not all delivered)", err)
	}
	if took > 3*time.Second {
		t.Errorf("Shutdown took %v with a 300ms deadline and a hung webhook", took)
	}
	if st := s.status.notifier.Stats(); st.Failed != 1 || st.Dropped != 1 {
		t.Errorf("alerts %+v; want the hung delivery failed and the queued one dropped", st)
	}
	if out := logs.String(); !strings.Contains(out, "alerts dropped at shutdown") || !strings.Contains(out, "dropped=1") {
		t.Errorf("the log does not say an alert was dropped:\n%s", out)
	}
}

// closeFails is a state store whose Close fails after closing the store it
// wraps, as the file store's does when its claim journal cannot be
// written at the end (a full disk).
type closeFails struct{ store.Store }

func (c closeFails) Close() error {
	_ = c.Store.Close()
	return errors.New("store: close state file /var/lib/ballast/state.db: write /var/lib/ballast/state.db.claims: no space left on device")
}

// A state store that fails to close may not have written what it held.
// Shutdown returned that error only when nothing had failed before it, so
// after a drain that ran out of time it was lost without a line; and no
// alert was raised. The log now always has it, and a state_failing alert
// goes out while there is time left (naming no path). Out of time, the
// alert is raised all the same, and the sender, which runs beside the
// shutdown, may deliver it before Close cancels it; what matters then is
// that Shutdown does not wait for the webhook: here it holds every
// delivery until the test ends.
func TestShutdownAlerts_StateCloseFailureIsLoggedAndAlerted(t *testing.T) {
	newServer := func(t *testing.T, hook string) (*Server, *lockedLog) {
		logs := &lockedLog{}
		s := newLoggedServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: orders, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`, hook), logs)
		s.state = newTimedStore(closeFails{s.state.(*timedStore).Store}, "memory", s.m)
		s.status.start()
		return s, logs
	}
	logged := func(t *testing.T, logs *lockedLog) {
		t.Helper()
		if out := logs.String(); !strings.Contains(out, "closing it failed at shutdown") || !strings.Contains(out, "no space left on device") {
			t.Errorf("the log lacks the store's close error:\n%s", out)
		}
	}
	t.Run("the drain finished in time", func(t *testing.T) {
		url, events := webhookEvents(t)
		s, logs := newServer(t, url)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "no space left") {
			t.Errorf("Shutdown = %v; want the store's close error", err)
		}
		logged(t, logs)
		select {
		case e := <-events:
			if e.Kind != supervise.KindStateFailing || strings.Contains(e.Detail, "/var/lib") || strings.Contains(e.Text, "no space") {
				t.Errorf("alert %+v; want state_failing, naming nothing of the error", e)
			}
		default:
			t.Errorf("no state_failing alert for the store's failed close (alerts: %+v)", s.status.notifier.Stats())
		}
	})
	t.Run("the drain ran out of time", func(t *testing.T) {
		hook := newHeldWebhook(t)
		s, logs := newServer(t, hook.url)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		returned := make(chan error, 1)
		go func() { returned <- s.Shutdown(ctx) }()
		select {
		case err := <-returned:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Shutdown = %v; want the drain's context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Shutdown out of time still waits on the webhook after 10s")
		}
		logged(t, logs)
	})
}

// Shutdown may wait on the webhook for the alerts still queued; a kill at
// the deadline (Kubernetes' grace period) must not take the last
// requests' trail lines with it, so they are written before that wait.
func TestShutdownAlerts_TrailIsWrittenBeforeTheWebhookWait(t *testing.T) {
	hook := newHeldWebhook(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{}`)) }))
	t.Cleanup(up.Close)
	trail := &lockedLog{}
	s := newTrailedServer(t, fmt.Sprintf(`
log: {flush_interval: 1h}
notify: {webhook: %q}
routes:
  - {name: tools, match: {path_prefix: /}, upstream: %q}
`, hook.url, up.URL), io.Discard, trail)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/last-call")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s.alertJobFailed("tools", "job-trail", "timeout")
	<-hook.entered // held: Shutdown will wait on it

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	waitClosed(t, s)
	waitUntil(t, func() bool { return strings.Contains(trail.String(), "/last-call") })
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while the alert was still being delivered", err)
	default:
	}
	hook.open()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
