package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func testJob(id string, state JobState, created time.Time) *Job {
	return &Job{
		ID:          id,
		Tenant:      "t1",
		Route:       "openai",
		State:       state,
		Attempts:    2,
		LastError:   "upstream 503",
		NextRetryAt: created.Add(time.Minute),
		CreatedAt:   created,
		UpdatedAt:   created.Add(time.Second),
		Request: Request{
			Method: "POST",
			URI:    "/openai/v1/chat?x=1",
			Header: []byte("Content-Type: application/json\r\n"),
			Body:   []byte(`{"model":"m"}`),
		},
	}
}

func sameJob(t *testing.T, got, want *Job) {
	t.Helper()
	g, w := *got, *want
	for _, j := range []*Job{&g, &w} {
		for _, p := range []*time.Time{&j.NextRetryAt, &j.CreatedAt, &j.UpdatedAt, &j.ExpiresAt} {
			*p = p.UTC()
		}
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("job = %+v\nwant  %+v", g, w)
	}
}

func TestJobs(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		a := testJob("a", JobQueued, t0.Add(2*time.Second))
		b := testJob("b", JobRunning, t0.Add(time.Second))
		c := testJob("c", JobSucceeded, t0)
		c.Response = resp(`{"done":true}`)
		for _, j := range []*Job{a, b, c} {
			if err := s.PutJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.GetJob(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		sameJob(t, got, c)

		tests := []struct {
			name   string
			states []JobState
			want   []string
		}{
			{"all, oldest first", nil, []string{"c", "b", "a"}},
			{"pending", []JobState{JobQueued, JobRunning}, []string{"b", "a"}},
			{"succeeded", []JobState{JobSucceeded}, []string{"c"}},
			{"failed", []JobState{JobFailed}, nil},
		}
		for _, tt := range tests {
			list, err := s.ListJobs(ctx, tt.states...)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, j := range list {
				ids = append(ids, j.ID)
			}
			if !reflect.DeepEqual(ids, tt.want) {
				t.Errorf("%s: ListJobs = %v, want %v", tt.name, ids, tt.want)
			}
		}

		// Replace: the caller updates a copy and puts it back.
		upd, _ := s.GetJob(ctx, "a")
		upd.State, upd.Attempts = JobFailed, 3
		if err := s.PutJob(ctx, upd); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetJob(ctx, "a"); got.State != JobFailed || got.Attempts != 3 {
			t.Fatalf("after replace: %+v", got)
		}
		if err := s.DeleteJob(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteJob(ctx, "a"); err != nil {
			t.Fatalf("deleting a missing job: %v", err)
		}
		if _, err := s.GetJob(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetJob after delete = %v, want ErrNotFound", err)
		}
	})
}

func TestJobCopiesCallerBuffers(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		j := testJob("a", JobQueued, t0)
		if err := s.PutJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		copy(j.Request.Body, "XXXX")
		got, _ := s.GetJob(ctx, "a")
		if string(got.Request.Body) != `{"model":"m"}` {
			t.Fatalf("stored body changed with the caller's buffer: %q", got.Request.Body)
		}
	})
}

func TestJobLimitsAndExpiry(t *testing.T) {
	forEachBackend(t, Limits{MaxJobs: 2, MaxResponseBytes: 256}, func(t *testing.T, s Store) {
		ctx := context.Background()
		a, b := testJob("a", JobQueued, t0), testJob("b", JobSucceeded, t0)
		b.ExpiresAt = t0.Add(time.Hour)
		for _, j := range []*Job{a, b} {
			if err := s.PutJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutJob(ctx, testJob("c", JobQueued, t0)); !errors.Is(err, ErrFull) {
			t.Fatalf("third job = %v, want ErrFull", err)
		}
		if err := s.PutJob(ctx, a); err != nil {
			t.Fatalf("replacing an existing job when full: %v", err)
		}
		big := testJob("a", JobSucceeded, t0)
		big.Response = &Response{Status: 200, Body: make([]byte, 257)}
		if err := s.PutJob(ctx, big); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("oversized response = %v, want ErrTooLarge", err)
		}
		bigReq := testJob("a", JobQueued, t0)
		bigReq.Request.Body = make([]byte, 256)
		if err := s.PutJob(ctx, bigReq); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("oversized request = %v, want ErrTooLarge", err)
		}
		if n, err := s.Sweep(t0.Add(time.Hour)); err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1 (job b; job a never expires)", n, err)
		}
		if _, err := s.GetJob(ctx, "b"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("expired job still there: %v", err)
		}
		if err := s.PutJob(ctx, testJob("c", JobQueued, t0)); err != nil {
			t.Fatalf("after sweep a new job fits: %v", err)
		}
	})
}

// TestLeaseJob: every backend leases a pending or not yet stored job, again
// and again (renewals), and refuses a final one. One instance owns every
// job of a Memory or File store.
func TestLeaseJob(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		for _, j := range []*Job{testJob("queued", JobQueued, t0), testJob("running", JobRunning, t0),
			testJob("succeeded", JobSucceeded, t0), testJob("failed", JobFailed, t0)} {
			if err := s.PutJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name, id string
			want     bool
		}{
			{"queued", "queued", true},
			{"running", "running", true},
			{"renewed", "running", true},
			{"not stored yet", "new", true},
			{"succeeded", "succeeded", false},
			{"failed", "failed", false},
		}
		for _, tt := range tests {
			got, err := s.LeaseJob(ctx, tt.id, t0, time.Minute)
			if err != nil || got != tt.want {
				t.Errorf("%s: LeaseJob = %v, %v; want %v", tt.name, got, err, tt.want)
			}
		}
		// A job that finishes under its lease can no longer be leased.
		done, _ := s.GetJob(ctx, "running")
		done.State = JobSucceeded
		if err := s.PutJob(ctx, done); err != nil {
			t.Fatal(err)
		}
		if got, err := s.LeaseJob(ctx, "running", t0, time.Minute); err != nil || got {
			t.Errorf("finished job: LeaseJob = %v, %v; want false", got, err)
		}
	})
}
