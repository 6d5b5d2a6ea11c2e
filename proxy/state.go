package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/prometheus/client_golang/prometheus"
)

// openState opens the configured state store: memory by default, the bbolt
// file when state.path is set. A corrupt or locked file is a start-up
// error that names the file and what to do.
func (s *Server) openState(c config.State) (store.Store, string, error) {
	lim := store.Limits{MaxRecords: c.MaxRecords, MaxJobs: c.MaxRecords, MaxResponseBytes: int(c.MaxResponseBytes)}
	backend := c.Backend
	if backend == "" {
		backend = "memory"
		if c.Path != "" {
			backend = "file"
		}
	}
	switch backend {
	case "file":
		f, err := store.OpenFile(c.Path, store.FileOptions{Limits: lim, OnAsyncError: s.stateFileFailed})
		if err != nil {
			return nil, "", fmt.Errorf("proxy: state: %w", err)
		}
		return f, backend, nil
	case "memory":
		return store.OpenMemory(store.MemoryOptions{Limits: lim}), backend, nil
	case "redis":
		sh, err := newShared(c.Redis, s.log, s.m)
		if err != nil {
			return nil, "", fmt.Errorf("proxy: state.redis: %w", err)
		}
		rs, err := store.OpenRedis(sh.client, store.RedisOptions{Limits: lim, Prefix: c.Redis.KeyPrefix, OpTimeout: c.Redis.OpTimeout.D()})
		if err != nil {
			sh.client.Close()
			return nil, "", fmt.Errorf("proxy: state.redis: %w", err)
		}
		s.shared = sh
		return newFailoverStore(rs, lim, sh, s.clock), backend, nil
	}
	return nil, "", fmt.Errorf("proxy: state.backend %q is not available in this build", backend)
}

// stateFileFailed is the file store's OnAsyncError. Claims reach the file
// after their journal entry, completions and releases after the agent has
// its answer: one that fails then can only be counted, logged and alerted
// on. It runs until the store's Close has returned (its final flush), so
// Shutdown closes the notifier only after the store.
func (s *Server) stateFileFailed(op, key string, err error) {
	s.m.stateErrors.WithLabelValues(op).Inc()
	if errors.Is(err, store.ErrNotHeld) {
		// Not the disk: the claim's lease ended (a sweep, or another
		// request's takeover) before its answer was written. Nothing an
		// operator can mend, so no alert; the key reads as the newer
		// claim says.
		s.log.Warn("state file: a "+opNoun(op)+" was not recorded: its claim was no longer held (its lease ended before the answer was written)", "op", op)
		return
	}
	s.log.Warn("state file: "+asyncFailure(op), "op", op, "error", err)
	s.alert(supervise.KindStateFailing, "", "", "the state file refused to record a "+opNoun(op)+" (the disk may be full or failing)")
}

// stateCloseFailed reports a state store that failed to close: what it
// still held (the file store's last commits, its claim journal) may not
// have been written. Shutdown returns only its first error, the drain's
// timeout when it ran out, so the log line is written here, whatever
// Shutdown returns; the alert is the one a refused background write
// raises, and names nothing of the error (a path, an address).
func (s *Server) stateCloseFailed(err error) {
	s.log.Error("state store: closing it failed at shutdown; what it still held may not have been written", "error", err.Error())
	s.alert(supervise.KindStateFailing, "", "", "the state store failed to close at shutdown: what it still held may not have been written (the disk may be full or failing)")
}

// asyncFailure says what a failed background write of op means for the
// key it was for.
func asyncFailure(op string) string {
	switch op {
	case "claim":
		return "a claim was not written to the file; it stands (its key reads as in flight) and the journal keeps it until its answer is written"
	case "complete":
		return "a completion was not recorded; a retry of this request will read as outcome unknown, or be replayed from memory until ballast restarts"
	case "release":
		return "a release was not recorded; its key is free all the same, and the release is written again with the next commits (a restart before one lands reads the key as outcome unknown; the error says when too many wait, and the key then reads as in flight until the claim's lease ends)"
	}
	return "a " + op + " was not recorded"
}

// opNoun names what a background write of op records.
func opNoun(op string) string {
	if op == "complete" {
		return "completion"
	}
	return op
}

// timedStore observes every state operation in
// ballast_state_store_seconds{op,backend}.
type timedStore struct {
	store.Store
	obs map[string]prometheus.Observer
}

func newTimedStore(s store.Store, backend string, m *metrics) *timedStore {
	t := &timedStore{Store: s, obs: map[string]prometheus.Observer{}}
	for _, op := range []string{"claim", "complete", "release", "wait", "get", "put_job", "get_job"} {
		t.obs[op] = m.stateSeconds.WithLabelValues(op, backend)
	}
	return t
}

func (t *timedStore) since(op string, start time.Time) {
	t.obs[op].Observe(time.Since(start).Seconds())
}

func (t *timedStore) Claim(ctx context.Context, key string, a store.ClaimArgs) (*store.Record, bool, error) {
	defer t.since("claim", time.Now())
	return t.Store.Claim(ctx, key, a)
}

func (t *timedStore) Complete(ctx context.Context, held *store.Record, resp *store.Response, now time.Time, ttl time.Duration) error {
	defer t.since("complete", time.Now())
	return t.Store.Complete(ctx, held, resp, now, ttl)
}

func (t *timedStore) Release(ctx context.Context, held *store.Record) error {
	defer t.since("release", time.Now())
	return t.Store.Release(ctx, held)
}

func (t *timedStore) Wait(ctx context.Context, key string) (*store.Record, error) {
	defer t.since("wait", time.Now())
	return t.Store.Wait(ctx, key)
}

func (t *timedStore) PutJob(ctx context.Context, j *store.Job) error {
	defer t.since("put_job", time.Now())
	return t.Store.PutJob(ctx, j)
}

func (t *timedStore) GetJob(ctx context.Context, id string) (*store.Job, error) {
	defer t.since("get_job", time.Now())
	return t.Store.GetJob(ctx, id)
}
