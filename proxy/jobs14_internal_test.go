package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/store"
)

// lookAfterPut is a replica's state store through which another replica
// looks for orphaned jobs (resumeJobs) right after each new job is
// written: the moment a replica that starts, or adopts, would see it.
type lookAfterPut struct {
	store.Store
	look func()
}

func (l lookAfterPut) PutJob(ctx context.Context, j *store.Job) error {
	err := l.Store.PutJob(ctx, j)
	if err == nil && j.State == store.JobQueued {
		l.look()
	}
	return err
}

// A job is never in the shared store without its lease: another replica
// looking for orphaned jobs right after it was written (one starting, or
// adopting) leaves it to the replica that took it, which runs it, so
// that the agent's wait there follows it. The job used to be written
// first and leased after, and a look in between took it over: the job
// then ran on the other replica, and a drain of the first waited for it
// (a CI failure of TestDrain10_JobWaitOnAnotherReplicaDoesNotHoldTheDrain).
func TestJob14_NewJobIsLeasedBeforeAnyReplicaSeesIt(t *testing.T) {
	rs := redistest.Start(t)
	release := make(chan struct{})
	var calls atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	yaml := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "lease14:"}}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, rs.Addr(), up.URL)
	first, other := newStatusServer(t, yaml), newStatusServer(t, yaml)
	t.Cleanup(func() { close(release) }) // before the Shutdowns: the call ends
	looked := 0
	first.state = lookAfterPut{Store: first.state, look: func() { looked++; other.resumeJobs() }}

	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/report")
	req.SetBodyString("{}")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	r := first.table.Load().routes[0]
	id := ""
	if !first.startJob(&ctx, r, req.Body(), time.Now().Add(10*time.Second), 0, func(got string) { id = got }) {
		t.Fatalf("the job did not start: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if looked != 1 || id == "" {
		t.Fatalf("the other replica looked %d times, job %q: want one look at a stored job", looked, id)
	}
	if _, here := first.jobs.running(id); !here {
		t.Error("the replica that took the job does not run it")
	}
	if _, there := other.jobs.running(id); there {
		t.Error("the other replica took the job over between its write and its lease, and runs it")
	}
	leased, err := other.state.LeaseJob(context.Background(), id, time.Now(), store.DefaultJobLease)
	if err != nil || leased {
		t.Errorf("the other replica's lease on the new job: %v %v, want refused (the first holds it)", leased, err)
	}
}
