package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/store"
)

// stalledRedis is the Redis store of a failoverStore that fails every job
// write and lease as a Redis that does not answer does (after op_timeout,
// each: here at once), counting the round trips that would have waited.
type stalledRedis struct {
	store.Store
	waits atomic.Int64
}

func (r *stalledRedis) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	r.waits.Add(1)
	return false, fmt.Errorf("%w: redis lease job: i/o timeout", store.ErrUnavailable)
}

func (r *stalledRedis) PutJob(ctx context.Context, j *store.Job) error {
	r.waits.Add(1)
	return fmt.Errorf("%w: redis put job: i/o timeout", store.ErrUnavailable)
}

// startWithStalledRedis starts an async job on a replica whose Redis
// stops answering (the health check has not seen it yet).
func startWithStalledRedis(t *testing.T, onError string) (s *Server, red *stalledRedis, ok bool, ctx *fasthttp.RequestCtx) {
	rs := redistest.Start(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) }))
	t.Cleanup(up.Close)
	s = newStatusServer(t, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "stall14:", on_error: %s}}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, rs.Addr(), onError, up.URL))
	fo := s.state.(*timedStore).Store.(*failoverStore)
	red = &stalledRedis{Store: fo.Store}
	fo.Store = red
	_, ok, ctx = startPostJob(s)
	return s, red, ok, ctx
}

func stateErrors(s *Server) float64 {
	var n float64
	for _, op := range []string{"claim", "wait", "put_job", "complete", "list_jobs", "lease_job"} {
		var m dto.Metric
		_ = s.m.stateErrors.WithLabelValues(op).Write(&m)
		n += m.GetCounter().GetValue()
	}
	return n
}

// Under fail_closed a job refused because Redis did not answer counts in
// ballast_state_errors_total, as every failed Redis operation does (it
// did as put_job while the write came first). The lease that now comes
// first failed and answered 503 without a count: an outage the health
// check had not seen yet refused every async job with no metric moving.
func TestJob14b_FailClosedLeaseFailureIsCounted(t *testing.T) {
	s, red, ok, ctx := startWithStalledRedis(t, "fail_closed")
	if ok || ctx.Response.StatusCode() != fasthttp.StatusServiceUnavailable {
		t.Fatalf("startJob = %v, %d: want refused with 503", ok, ctx.Response.StatusCode())
	}
	if red.waits.Load() != 1 {
		t.Errorf("%d round trips to the stalled Redis, want 1", red.waits.Load())
	}
	if n := stateErrors(s); n != 1 {
		t.Errorf("ballast_state_errors_total = %v after a job refused because Redis did not answer, want 1", n)
	}
}

// Under fail_open a job whose lease Redis did not answer goes to the
// local store at once: the write used to ask the same stalled Redis
// again, so the agent's 202 waited out op_timeout twice (it waited once
// while the write came first, and the lease then went to the local job).
func TestJob14b_FailOpenStalledRedisAskedOnce(t *testing.T) {
	s, red, ok, ctx := startWithStalledRedis(t, "fail_open")
	if !ok || ctx.Response.StatusCode() != fasthttp.StatusAccepted {
		t.Fatalf("startJob = %v, %d %s: want 202", ok, ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if n := red.waits.Load(); n != 1 {
		t.Errorf("the job's start asked the stalled Redis %d times (each an op_timeout to wait out), want once", n)
	}
	if n := stateErrors(s); n != 1 {
		t.Errorf("ballast_state_errors_total = %v, want 1", n)
	}
	jobs, err := s.state.(*timedStore).Store.(*failoverStore).local.ListJobs(context.Background())
	if err != nil || len(jobs) != 1 {
		t.Fatalf("local jobs: %d, %v; want the job", len(jobs), err)
	}
}

// blipRedis fails the first job lease as a Redis blip does, and passes
// everything else to Redis.
type blipRedis struct {
	store.Store
	failed atomic.Bool
}

func (r *blipRedis) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	if r.failed.CompareAndSwap(false, true) {
		return false, fmt.Errorf("%w: redis lease job: i/o timeout", store.ErrUnavailable)
	}
	return r.Store.LeaseJob(ctx, id, now, lease)
}

// Under fail_open, a new job whose lease Redis failed (a blip, or Redis
// known down and back a moment later) runs here at once; its write must
// then not leave it in Redis without a lease, where another replica
// looking for orphaned jobs takes it over and runs it too. The write
// went to Redis when Redis answered it, and the lease came only with
// the runner's first renewal, ten seconds on (a POST's job taken over
// while running is failed as outcome unknown by the replica that takes it).
func TestJob14b_FailOpenLeaseBlipDoesNotLeaveAnOrphan(t *testing.T) {
	rs := redistest.Start(t)
	up, release := heldUpstream(t)
	yaml := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "blip14:", on_error: fail_open}}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, rs.Addr(), up)
	first, other := newStatusServer(t, yaml), newStatusServer(t, yaml)
	t.Cleanup(func() { close(release) })
	fo := first.state.(*timedStore).Store.(*failoverStore)
	fo.Store = &blipRedis{Store: fo.Store}

	id, ok, ctx := startPostJob(first)
	if !ok {
		t.Fatalf("the job did not start: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if _, here := first.jobs.running(id); !here {
		t.Fatal("the replica that started the job does not run it")
	}
	other.resumeJobs()
	if _, there := other.jobs.running(id); there {
		t.Error("another replica took the new job over and runs it too: it was in Redis without a lease")
	}
	if j, err := other.state.GetJob(context.Background(), id); err == nil && !j.State.Pending() {
		t.Errorf("another replica took the new job over and marked it %v (%s) while this one runs it: it was in Redis without a lease", j.State, j.LastError)
	}
}
