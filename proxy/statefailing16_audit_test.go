package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
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
