package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
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

// heldUpstream is an upstream whose calls wait for release (or for
// ballast to hang up). Close release before the servers' Shutdowns,
// which would otherwise wait for the calls.
func heldUpstream(t *testing.T) (url string, release chan struct{}) {
	release = make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(up.Close)
	return up.URL, release
}

// startPostJob starts an async POST /report on s's first route, as a
// request with Prefer: respond-async would: the job's id ("" when none
// was stored), whether it started, and the request's context, which
// holds the answer.
func startPostJob(s *Server) (id string, ok bool, ctx *fasthttp.RequestCtx) {
	req := new(fasthttp.Request)
	req.Header.SetMethod("POST")
	req.SetRequestURI("/report")
	req.SetBodyString("{}")
	ctx = new(fasthttp.RequestCtx)
	ctx.Init(req, nil, nil)
	ok = s.startJob(ctx, s.table.Load().routes[0], req.Body(), time.Now().Add(10*time.Second), 0, func(got string) { id = got })
	return id, ok, ctx
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
	up, release := heldUpstream(t)
	yaml := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "lease14:"}}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, rs.Addr(), up)
	first, other := newStatusServer(t, yaml), newStatusServer(t, yaml)
	t.Cleanup(func() { close(release) }) // before the Shutdowns: the call ends
	looked := 0
	first.state = lookAfterPut{Store: first.state, look: func() { looked++; other.resumeJobs() }}

	id, ok, ctx := startPostJob(first)
	if !ok {
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

// putWatch is a state store that calls onPut with each job before it
// writes it.
type putWatch struct {
	store.Store
	onPut func(*store.Job)
}

func (p putWatch) PutJob(ctx context.Context, j *store.Job) error {
	p.onPut(j)
	return p.Store.PutJob(ctx, j)
}

// A job that fails raises its job_failed alert before the store shows it
// failed: a poll returns as soon as it reads the failure, and an agent
// (or its supervisor) that then looks for the alert finds it. The alert
// used to follow the write, and a test's later alert could overtake it
// (a flake of TestAlertSeams11_CutStreamJobAlertsWithoutSecrets).
func TestJob14_FailedJobAlertsBeforeItIsStored(t *testing.T) {
	alerts := make(chan supervise.Event, 16)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err == nil {
			alerts <- e
		}
	}))
	t.Cleanup(hook.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	t.Cleanup(up.Close)
	s := newStatusServer(t, fmt.Sprintf(`
notify: {webhook: %q}
routes:
  - {name: report, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}}
`, hook.URL+"/hook", up.URL))
	s.status.configure(s.Config())
	s.status.start()
	alertedFirst := false
	s.state = putWatch{Store: s.state, onPut: func(j *store.Job) {
		if j.State != store.JobFailed {
			return
		}
		select { // the alert, if raised, is on its way to the hook
		case e := <-alerts:
			alertedFirst = e.Kind == supervise.KindJobFailed && e.Route == "report"
		case <-time.After(5 * time.Second):
		}
	}}
	now := time.Now()
	job := &store.Job{ID: "job14-alert", Tenant: "t", Route: "report", State: store.JobQueued,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour),
		Request: store.Request{Method: "GET", URI: "/report"}}
	s.runJob(job, nil)
	got, err := s.state.GetJob(context.Background(), job.ID)
	if err != nil || got.State != store.JobFailed || got.Response == nil || got.Response.Status != 503 {
		t.Fatalf("the job as stored: %+v %v; want failed with the upstream's 503", got, err)
	}
	if !alertedFirst {
		t.Error("the failed job was stored before its job_failed alert was raised")
	}
}
