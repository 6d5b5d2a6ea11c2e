package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/store"
)

// A finished job keeps its response but not the request's headers and
// body: they may hold the agent's credentials, and nothing runs the job
// again.
func TestFinishedJobForgetsTheRequest(t *testing.T) {
	var auth atomic.Value // written by the upstream's goroutine
	auth.Store("")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	s := newStatusServer(t, fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, up.URL))
	ctx := context.Background()
	for _, tt := range []struct {
		name, route string
		want        store.JobState
	}{
		{name: "succeeded", route: "long", want: store.JobSucceeded},
		{name: "failed: its route is gone", route: "gone", want: store.JobFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			job := &store.Job{ID: "job-" + tt.route, Tenant: "t", Route: tt.route, State: store.JobQueued,
				CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour),
				Request: store.Request{Method: "POST", URI: "/report",
					Header: []byte("Authorization: Bearer alice-secret\r\nContent-Type: application/json\r\n"), Body: []byte(`{"api_key":"sk-1"}`)}}
			if err := s.state.PutJob(ctx, job); err != nil {
				t.Fatal(err)
			}
			s.runJob(job, nil)
			got, err := s.state.GetJob(ctx, job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != tt.want {
				t.Fatalf("state %v, want %v (%s)", got.State, tt.want, got.LastError)
			}
			if len(got.Request.Header) != 0 || len(got.Request.Body) != 0 {
				t.Errorf("the finished job still holds the request: headers %q, body %q", got.Request.Header, got.Request.Body)
			}
			if got.Request.Method != "POST" || got.Request.URI != "/report" {
				t.Errorf("request line %s %s, want POST /report kept", got.Request.Method, got.Request.URI)
			}
		})
	}
	if auth := auth.Load().(string); auth != "Bearer alice-secret" {
		t.Errorf("the upstream saw Authorization %q: the job must run with the agent's headers", auth)
	}
}

// A pending job in the shared store that no replica holds a lease on (its
// replica died) is adopted by the next look of a live replica, and run
// once: a job already running here is not launched again, however often
// the replica looks.
func TestLiveReplicaAdoptsOrphanedJobs(t *testing.T) {
	rs := redistest.Start(t)
	release, started := make(chan struct{}), make(chan struct{}, 1)
	var calls atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	s := newStatusServer(t, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "adopt:"}}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, rs.Addr(), up.URL))
	ctx := context.Background()
	now := time.Now()
	job := &store.Job{ID: "orphan", Tenant: "t", Route: "long", State: store.JobQueued,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour),
		Request: store.Request{Method: "GET", URI: "/report"}}
	if err := s.state.PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	bg, stop := context.WithCancel(ctx)
	adopted := make(chan struct{})
	go func() { defer close(adopted); s.adoptJobs(bg, 5*time.Millisecond) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the orphaned job was not adopted")
	}
	// Many more looks while it runs here: none launches it again.
	for i := 0; i < 20; i++ {
		s.resumeJobs()
	}
	stop()
	<-adopted
	close(release)
	if n := calls.Load(); n != 1 {
		t.Fatalf("the job ran %d times, want once", n)
	}
}
