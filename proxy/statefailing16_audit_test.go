package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/valyala/fasthttp"
)

// refusingOutcomes is a state store that refuses to record a job's
// outcome (a final state), as a full disk or an unreachable Redis would.
type refusingOutcomes struct {
	store.Store
	err error
}

func (r refusingOutcomes) PutJob(ctx context.Context, j *store.Job) error {
	if !j.State.Pending() {
		return r.err
	}
	return r.Store.PutJob(ctx, j)
}

// An async job's outcome is written after the agent had its 202, by the
// runner alone. When the store refused it, nothing said so: no log line,
// no alert, and the agent's polls read the job as running until it
// expired. A refused write of a job's state raises state_failing, as a
// refused background write of the state file does.
func TestStateFailing16_RefusedJobOutcomeAlerts(t *testing.T) {
	url, events := webhookEvents(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) }))
	t.Cleanup(up.Close)
	s := newStatusServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: report, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, url, up.URL))
	s.status.start()
	disk := errors.New("store: put job in /var/lib/ballast/state.db: write: no space left on device")
	s.state = refusingOutcomes{Store: s.state, err: disk}
	now := time.Now()
	job := &store.Job{ID: "job16-refused-outcome", Tenant: "t", Route: "report", State: store.JobQueued,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour),
		Request: store.Request{Method: "GET", URI: "/report"}}
	s.runJob(job, nil)
	e := nextEvent(t, events)
	if e.Kind != supervise.KindStateFailing || e.Route != "report" {
		t.Fatalf("alert %+v; want state_failing on route report", e)
	}
	for _, secret := range []string{job.ID, "/var/lib", "no space"} {
		if strings.Contains(e.Detail, secret) || strings.Contains(e.Text, secret) {
			t.Errorf("alert %+v names %q", e, secret)
		}
	}
}

// failingJobReads is a state store that cannot read jobs: Redis down
// under fail_closed.
type failingJobReads struct{ store.Store }

func (failingJobReads) GetJob(context.Context, string) (*store.Job, error) {
	return nil, fmt.Errorf("%w: redis at 10.0.0.7:6379: i/o timeout", store.ErrUnavailable)
}

// A poll of a job while the store cannot be read was answered 404 "no
// job ... (unknown, expired, or started by another identity)": an agent
// that believes it starts the job again, and the call runs twice. A store
// failure is a 503 state_unavailable, with its alert, as for a keyed
// request; a job the store does not have is still a 404.
func TestStateFailing16_JobPollOnAFailingStoreIs503(t *testing.T) {
	url, events := webhookEvents(t)
	s := newStatusServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: report, match: {path_prefix: /}, upstream: "http://127.0.0.1:1", async: {enabled: true}}
`, url))
	s.status.start()
	var ok fasthttp.RequestCtx
	s.serveJob(&ok, "no-such-job", "t", 0, "")
	if code := ok.Response.StatusCode(); code != fasthttp.StatusNotFound {
		t.Fatalf("poll of an unknown job = %d, want 404", code)
	}
	s.state = failingJobReads{Store: s.state}
	var ctx fasthttp.RequestCtx
	s.serveJob(&ctx, "job16-poll", "t", 0, "")
	if code, body := ctx.Response.StatusCode(), string(ctx.Response.Body()); code != fasthttp.StatusServiceUnavailable ||
		!strings.Contains(body, string(ReasonStateUnavailable)) || strings.Contains(body, "10.0.0.7") {
		t.Fatalf("poll with the store failing = %d %s; want 503 state_unavailable, without the cause", code, body)
	}
	if e := nextEvent(t, events); e.Kind != supervise.KindStateFailing || strings.Contains(e.Detail, "10.0.0.7") {
		t.Fatalf("alert %+v; want state_failing without the cause", e)
	}
}

// A completion or release the file store could not write because its
// claim was no longer held (its lease ended and a sweep or another
// request took the key over) is no disk failure: it raised state_failing
// saying "the disk may be full or failing", sending an operator to look
// at a healthy disk. It is logged and counted, and raises nothing.
func TestStateFailing16_ClaimNoLongerHeldIsNoDiskAlert(t *testing.T) {
	url, events := webhookEvents(t)
	s := newStatusServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`, url))
	var logs strings.Builder
	s.log = slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	s.status.start()
	s.stateFileFailed("complete", "k1", store.ErrNotHeld)
	// An alert of another kind, raised after: the first the webhook gets
	// must be it.
	s.alert(supervise.KindCooldown, "pay", "", "marker")
	if e := nextEvent(t, events); e.Kind != supervise.KindCooldown {
		t.Fatalf("first alert %+v; a claim no longer held raised an alert", e)
	}
	s.stateFileFailed("release", "k2", fmt.Errorf("store: release: %w", errors.New("write: no space left on device")))
	if e := nextEvent(t, events); e.Kind != supervise.KindStateFailing {
		t.Fatalf("alert %+v; want state_failing for a refused write", e)
	}
	if out := logs.String(); !strings.Contains(out, "no longer held") || strings.Contains(out, "k1") {
		t.Errorf("log:\n%s", out)
	}
}

// syncWriter serializes writes to w: the server logs from more than one
// goroutine.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
