package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redisconn"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/ballast-proxy/ballast/store"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// shared is ballast's link to Redis, when state.backend is redis: the
// client, whether Redis answers now, and what to do when it does not.
type shared struct {
	client     *redis.Client
	cfg        config.Redis
	failOpen   bool
	up         atomic.Bool
	cool       *ratelimit.Cooldown
	publishing chan struct{} // bounds concurrent cool-down publications
	// coolBehind says that the fleet may lack pauses this replica holds:
	// a publication failed or was skipped, or Redis was away (it may come
	// back empty). The next cool-down sync publishes them (syncCooldowns).
	coolBehind atomic.Bool
	log        *slog.Logger
	upGauge    prometheus.Gauge
	errs       *prometheus.CounterVec
	reconciled *prometheus.CounterVec
	// back asks the failover store's reconciler for a pass (see
	// failoverStore.reconcile): Redis answers again, or the local store
	// has something to bring to it.
	back chan struct{}
}

// quietRedisLog stops go-redis from printing every failed dial to stderr;
// ballast's health watcher reports outages once, in its own log.
var quietRedisLog sync.Once

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

func newShared(c config.Redis, log *slog.Logger, m *metrics) (*shared, error) {
	quietRedisLog.Do(func() { redis.SetLogger(discardRedisLog{}) })
	client, err := redisconn.New(redisconn.Options{
		Addr: c.Address, Username: c.Username, Password: c.Password, TLS: c.TLS, CAFile: c.CAFile,
		DialTimeout: c.DialTimeout.D(), ReadTimeout: c.ReadTimeout.D(), WriteTimeout: c.WriteTimeout.D(),
	})
	if err != nil {
		return nil, err
	}
	cool, err := ratelimit.NewCooldown(client, c.KeyPrefix, c.OpTimeout.D())
	if err != nil {
		client.Close()
		return nil, err
	}
	sh := &shared{client: client, cfg: c, failOpen: c.OnError != "fail_closed", cool: cool, log: log,
		publishing: make(chan struct{}, 4), back: make(chan struct{}, 1),
		upGauge: m.backendUp, errs: m.stateErrors, reconciled: m.stateReconciled}
	sh.up.Store(true) // optimistic until the health watcher says otherwise
	sh.upGauge.Set(1)
	return sh, nil
}

// watch follows Redis's health until ctx ends.
func (sh *shared) watch(ctx context.Context, clock policy.Clock) {
	redisconn.WatchHealth(ctx, sh.client, clock, time.Second, func(up bool) {
		sh.up.Store(up)
		if up {
			sh.upGauge.Set(1)
			sh.log.Info("redis is reachable; shared state is back")
			sh.coolBehind.Store(true) // the pauses taken meanwhile go to Redis
			sh.poke()                 // what the outage left in the local store goes to Redis
			return
		}
		sh.upGauge.Set(0)
		if sh.failOpen {
			sh.log.Error("redis is unreachable: rate limits, idempotency and cool-downs are per replica until it is back (state.redis.on_error: fail_open)")
		} else {
			sh.log.Error("redis is unreachable: guarded and rate-limited requests get 503 until it is back (state.redis.on_error: fail_closed)")
		}
	})
}

// failed counts a Redis failure and reports whether to fall back locally.
// Whether Redis is up, and the ballast_state_backend_up gauge, are the
// health watcher's to say: one failed operation (a blip, a slow reply)
// does not mark Redis down, or the gauge would stay at 0 while the
// watcher, whose view did not change, never set it back.
func (sh *shared) failed(op string, err error) bool {
	sh.errs.WithLabelValues(op).Inc()
	return sh.failOpen
}

// down reports whether the health watcher knows Redis to be unreachable:
// an operation then skips the round trip that would only wait out
// op_timeout (the watcher brings Redis back within a second of its
// return).
func (sh *shared) down() bool { return !sh.up.Load() }

// errKnownDown is the error of an operation skipped because Redis is
// known to be unreachable, under fail_closed.
var errKnownDown = errors.New("redis is unreachable (health check)")

// failoverStore is the redis store with a local memory store behind it
// for fail_open: while Redis is unreachable, claims and jobs go to the
// local store (per replica), and return to Redis when it answers.
//
// A key the local store holds is answered from there (replayed, attached
// to, or refused as a mismatch) until reconciliation, once Redis answers
// again, has brought its record to Redis (see reconcilePass): Redis never
// saw the outage's claims and answers, so a retry of one of them must not
// claim it afresh in Redis and run the call a second time. The record is
// written to Redis unless Redis holds one of the key already (which then
// wins, a conflict), and the local copy is dropped; a claim still in
// flight is published and stays local until its call ends. Until then,
// and during the outage, "runs once" holds per replica.
//
// A key this replica holds claimed in Redis (its call still running) is
// remembered in running, so that a duplicate sent to this replica attaches
// to the call even when Redis cannot say that it runs (it is down, or
// restarted empty): the claim is mirrored in the local store, where the
// duplicate waits for it, and its answer is kept there too.
//
// A key this replica has seen Redis hold a record of (an answer it
// stored or replayed, a call in flight or with its outcome lost, a
// mismatch) is remembered in known, until that record expires: while
// Redis cannot be asked, a request with such a key is not run (it ran
// already, or runs elsewhere) but refused with an error wrapping
// store.ErrUnavailable, 503 state_unavailable, unless its route says
// that running it again is safe (idempotency.idempotent). Keys this
// replica never saw in Redis run locally: ballast cannot tell a new key
// from one another replica used.
type failoverStore struct {
	store.Store // redis
	local       *store.Memory
	sh          *shared
	clock       policy.Clock
	bg          sync.WaitGroup // forgetJob's deletes, waited for by Close

	mu      sync.Mutex
	running map[string]*redisClaim // this replica's Redis claims in flight (fail_open); nil until the first
	// known maps the keys Redis holds a record of, as far as this replica
	// has seen, to when that record expires (fail_open; nil until the
	// first). It keeps at most maxKnown keys (store.DefaultMaxRecords when
	// 0), least recently seen dropped first.
	known    *simplelru.LRU[string, time.Time]
	maxKnown int
	// remote is the Redis store's put-if-absent, for reconciliation (nil:
	// none, the local store's records stay local until they expire).
	remote recordPutter
	// published maps the local claims in flight that a reconciliation
	// pass wrote to Redis to their records, until the pass that finishes
	// them in Redis (see reconcilePass).
	published map[string]*store.Record
	// forgetting counts, by job id, the deletes forgetJob has in flight.
	forgetting map[string]int
}

// newFailoverStore wraps rs, the Redis store, for sh. The local store and
// the keys remembered as held in Redis are bounded by lim.MaxRecords.
func newFailoverStore(rs store.Store, lim store.Limits, sh *shared, clock policy.Clock) *failoverStore {
	f := &failoverStore{Store: rs, local: store.OpenMemory(store.MemoryOptions{Limits: lim, Scannable: true}), sh: sh, clock: clock, maxKnown: lim.MaxRecords}
	f.remote, _ = rs.(recordPutter)
	return f
}

// errHeldInRedis is why a request whose key Redis holds a record of is
// not run while Redis cannot be asked (see failoverStore).
var errHeldInRedis = errors.New("redis holds the record of this key (its answer, or its call in flight elsewhere) and cannot be reached: " +
	"the request is not run again; retry once redis answers")

// remember notes that Redis holds a record of key until expires.
func (f *failoverStore) remember(key string, expires time.Time) {
	if !f.sh.failOpen {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known == nil {
		max := f.maxKnown
		if max <= 0 {
			max = store.DefaultMaxRecords
		}
		f.known, _ = simplelru.NewLRU[string, time.Time](max, nil) // fails only for max ≤ 0
	}
	f.known.Add(key, expires)
}

// heldInRedis reports whether Redis held a live record of key when this
// replica last saw it.
func (f *failoverStore) heldInRedis(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known == nil {
		return false
	}
	expires, ok := f.known.Peek(key)
	if ok && !f.clock.Now().Before(expires) {
		f.known.Remove(key)
		return false
	}
	return ok
}

// claimLocally claims key in the local store, Redis being unreachable
// (fail_open), unless Redis is known to hold a record of it that the
// local store does not answer for (see failoverStore).
func (f *failoverStore) claimLocally(ctx context.Context, key string, a store.ClaimArgs) (*store.Record, bool, error) {
	if !a.TakeOverUnknown && f.heldInRedis(key) {
		if _, ok := f.heldLocally(key); !ok {
			return nil, false, fmt.Errorf("%w: %w", store.ErrUnavailable, errHeldInRedis)
		}
	}
	rec, owned, err := f.local.Claim(ctx, key, a)
	if owned {
		f.poke() // Redis failed on a blip: publish the claim once it answers
	}
	return rec, owned, err
}

// redisClaim is a claim this replica holds in Redis, and its mirror in the
// local store once a duplicate needed one.
type redisClaim struct {
	held, mirror *store.Record
}

func unavailable(err error) bool { return errors.Is(err, store.ErrUnavailable) }

// heldLocally reports whether the local store holds a live record of key
// (completed, in flight, or with its outcome lost): one made while Redis
// was unreachable.
func (f *failoverStore) heldLocally(key string) (*store.Record, bool) {
	if !f.sh.failOpen {
		return nil, false // fail_closed never writes the local store
	}
	rec, err := f.local.Get(context.Background(), key, f.clock.Now())
	return rec, err == nil
}

// localClaim reports whether held is a claim of the local store.
func (f *failoverStore) localClaim(held *store.Record) bool {
	return held != nil && held.Owner == f.local.Owner()
}

func (f *failoverStore) Claim(ctx context.Context, key string, a store.ClaimArgs) (*store.Record, bool, error) {
	if f.mirror(key, 0) != nil {
		// This replica runs the call: the duplicate attaches to it here.
		return f.local.Claim(ctx, key, a)
	}
	if f.sh.down() {
		if f.sh.failOpen {
			return f.claimLocally(ctx, key, a)
		}
		return nil, false, fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	if _, ok := f.heldLocally(key); ok {
		return f.local.Claim(ctx, key, a)
	}
	rec, owned, err := f.Store.Claim(ctx, key, a)
	if err != nil && unavailable(err) && f.sh.failed("claim", err) {
		return f.claimLocally(ctx, key, a)
	}
	switch {
	case !f.sh.failOpen || rec == nil:
	case owned:
		f.mu.Lock()
		if f.running == nil {
			f.running = make(map[string]*redisClaim)
		}
		f.running[key] = &redisClaim{held: rec}
		f.mu.Unlock()
	default: // answered, in flight elsewhere, lost, or a mismatch
		f.remember(key, rec.ExpiresAt)
	}
	return rec, owned, err
}

// mirror returns the local store's mirror of the claim on key that this
// replica holds in Redis, its call still running (the claim with token,
// when token is not 0), making it if need be: same fingerprint, start,
// lease and expiry. A duplicate finds it in flight there and waits for
// its answer. It returns nil when there is no such claim, or the local
// store cannot take it (full, or holding the key already).
func (f *failoverStore) mirror(key string, token uint64) *store.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.running[key]
	if c == nil || token != 0 && c.held.Token != token {
		return nil
	}
	if c.mirror == nil {
		h := c.held
		rec, owned, err := f.local.Claim(context.Background(), key, store.ClaimArgs{
			Fingerprint: h.Fingerprint, Now: h.StartedAt,
			Lease: h.LeaseUntil.Sub(h.StartedAt), TTL: h.ExpiresAt.Sub(h.StartedAt),
		})
		if err != nil || !owned {
			return nil
		}
		c.mirror = rec
	}
	return c.mirror
}

// endRunning forgets held, this replica's Redis claim, once its call has
// ended, and returns its local mirror (nil when none was made).
func (f *failoverStore) endRunning(held *store.Record) *store.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.running[held.Key]
	if c == nil || c.held.Token != held.Token {
		return nil
	}
	delete(f.running, held.Key)
	return c.mirror
}

// Complete, Release and GetJob, like Claim, make no Redis round trip while
// the health check knows Redis is down: under fail_open the local store
// has what the outage wrote, and a record or job Redis holds could not be
// reached anyway (only after op_timeout). A claim made in the local store
// is finished there whether Redis is back or not.
//
// A response Redis cannot take under fail_open (it did not answer, or it
// lost the claim, restarted empty) is recorded in the local store instead,
// so that the agent's retry on this replica replays it; other replicas
// see the Redis claim in flight until its lease ends, and then its
// outcome as unknown. A claim mirrored locally (see mirror) gets its
// answer there too, for the duplicates attached to it.
func (f *failoverStore) Complete(ctx context.Context, held *store.Record, resp *store.Response, now time.Time, ttl time.Duration) error {
	if f.localClaim(held) {
		err := f.local.Complete(ctx, held, resp, now, ttl)
		f.poke() // its answer goes to Redis, finishing the claim a pass published
		return err
	}
	var err error
	if f.sh.down() {
		err = fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	} else if err = f.Store.Complete(ctx, held, resp, now, ttl); err == nil {
		if ttl <= 0 {
			ttl = store.DefaultTTL
		}
		f.remember(held.Key, now.Add(ttl))
		if m := f.endRunning(held); m != nil {
			f.completeMirror(ctx, m, resp, now, ttl)
		}
		return nil
	} else if unavailable(err) {
		f.sh.failed("complete", err)
	}
	if !f.sh.failOpen || !(unavailable(err) || errors.Is(err, store.ErrNotHeld)) {
		if !errors.Is(err, store.ErrTooLarge) { // else the caller releases it
			f.endRunning(held) // its mirror, if any, ends with its lease, as the Redis claim does
		}
		return err
	}
	if f.completeLocally(ctx, held, resp, now, ttl) != nil {
		return err
	}
	f.poke()
	return nil
}

// completeLocally records resp, the outcome of the Redis claim held, in
// the local store: in the claim's mirror, made now if there is none.
func (f *failoverStore) completeLocally(ctx context.Context, held *store.Record, resp *store.Response, now time.Time, ttl time.Duration) error {
	defer f.endRunning(held) // once the answer is kept: a duplicate meanwhile finds the mirror
	rec := f.mirror(held.Key, held.Token)
	if rec == nil {
		var owned bool
		var err error
		rec, owned, err = f.local.Claim(ctx, held.Key, store.ClaimArgs{Fingerprint: held.Fingerprint, Now: now, TTL: ttl})
		switch {
		case err != nil:
			return err
		case !owned:
			return fmt.Errorf("%w: the local store holds the key already (%s)", store.ErrNotHeld, rec.State)
		}
	}
	return f.completeMirror(ctx, rec, resp, now, ttl)
}

// completeMirror completes rec, a claim the local store holds for a Redis
// claim, with resp, or releases it when the local store will not take
// resp (its waiters then claim the key again).
func (f *failoverStore) completeMirror(ctx context.Context, rec *store.Record, resp *store.Response, now time.Time, ttl time.Duration) error {
	if err := f.local.Complete(ctx, rec, resp, now, ttl); err != nil {
		_ = f.local.Release(ctx, rec)
		return err
	}
	return nil
}

func (f *failoverStore) Release(ctx context.Context, held *store.Record) error {
	if f.localClaim(held) {
		err := f.local.Release(ctx, held)
		f.poke() // a claim a pass published is released in Redis too
		return err
	}
	if m := f.endRunning(held); m != nil {
		_ = f.local.Release(ctx, m) // its duplicates claim the key again
	}
	f.mu.Lock()
	if f.known != nil {
		f.known.Remove(held.Key) // free, as far as this replica knows
	}
	f.mu.Unlock()
	if f.sh.down() {
		// A Redis claim: its lease frees it once Redis is back.
		return fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	return f.Store.Release(ctx, held)
}

// Wait waits where the key lives: in the local store when it holds the
// key (or Redis is known to be down, under fail_open), else in Redis. A
// key the local store holds answered or lost is returned at once: the
// caller may have found it in flight in Redis before its answer was kept
// locally (completeLocally), and the Redis claim would keep a wait there
// until its lease ends. For the same reason a wait in Redis under
// fail_open also watches the local store, and ends as soon as an answer
// is kept there, without waiting for Redis to answer a read.
func (f *failoverStore) Wait(ctx context.Context, key string) (*store.Record, error) {
	if !f.sh.failOpen {
		return f.Store.Wait(ctx, key)
	}
	if f.sh.down() {
		return f.local.Wait(ctx, key)
	}
	kept, stop := f.local.Watch(key) // before the look: an answer kept after it still wakes
	defer stop()
	if rec, ok := f.heldLocally(key); ok {
		if rec.State == store.InFlight {
			return f.local.Wait(ctx, key)
		}
		return rec, nil
	}
	// A Redis read in progress ends at its deadline (op_timeout), not when
	// its ctx is cancelled: the Redis wait runs in a goroutine of its own,
	// left to end by itself once the local store has the answer.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type waited struct {
		rec *store.Record
		err error
	}
	done := make(chan waited, 1)
	go func() {
		rec, err := f.Store.Wait(rctx, key)
		done <- waited{rec, err}
	}()
	var w waited
	select {
	case w = <-done:
	case <-kept:
		if rec, ok := f.heldLocally(key); ok && rec.State != store.InFlight {
			return rec, nil
		}
		return f.local.Wait(ctx, key)
	}
	switch {
	case w.err == nil:
		if w.rec != nil {
			f.remember(key, w.rec.ExpiresAt)
		}
		return w.rec, nil
	case unavailable(w.err) && f.sh.failed("wait", w.err):
		return f.local.Wait(ctx, key)
	}
	return nil, w.err
}

// PutJob stores a job in Redis, or under fail_open in the local store when
// Redis is down or does not answer in time: within op_timeout, or within
// ctx, the request's deadline, when the job is being started (a job whose
// start ran out of time is started locally rather than refused). A job
// the local store holds stays there while it is pending, also once Redis
// is back: its runner and its readers on this replica find it in one
// place (other replicas do not see it). Once final, reconciliation writes
// it to Redis and drops the local copy (see reconcilePass).
func (f *failoverStore) PutJob(ctx context.Context, j *store.Job) error {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.PutJob(ctx, j)
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	if nj := startingJob(ctx); nj != nil && nj.redisFailed && f.sh.failOpen {
		// Redis just failed this job's lease, which runs it here: asking
		// Redis again would wait out op_timeout a second time before the
		// agent's 202, and a write it took would sit there unleased
		// until the runner's first renewal, for another replica to take.
		return f.local.PutJob(ctx, j)
	}
	if f.sh.failOpen {
		if _, err := f.local.GetJob(ctx, j.ID); err == nil {
			err := f.local.PutJob(ctx, j)
			if !j.State.Pending() {
				f.poke() // a final job goes to Redis
			}
			return err
		}
	}
	err := f.Store.PutJob(ctx, j)
	if err == nil {
		return nil
	}
	timedOut := errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil
	if !unavailable(err) && !timedOut {
		return err
	}
	if j.State == store.JobQueued {
		f.forgetJob(j.ID)
	}
	if f.sh.failed("put_job", err) {
		return f.local.PutJob(ctx, j)
	}
	if timedOut {
		return fmt.Errorf("%w: redis did not store the job within the request's deadline: %w", store.ErrUnavailable, err)
	}
	return err
}

// forgetJob deletes from Redis, in the background, a new job whose write
// failed or timed out: a slow write may yet land, and a pending job that
// nobody holds a lease on would be taken over and run by some replica,
// while the agent was told that it did not start (fail_closed) or it runs
// from the local store (fail_open). Redis runs commands in the order they
// come, so the delete follows the late write. It is bounded by op_timeout.
// Reconciliation leaves the job alone until the delete has ended, so that
// the delete cannot remove the copy it writes (see reconcilePass).
func (f *failoverStore) forgetJob(id string) {
	f.mu.Lock()
	if f.forgetting == nil {
		f.forgetting = make(map[string]int)
	}
	f.forgetting[id]++
	f.mu.Unlock()
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		c, cancel := context.WithTimeout(context.Background(), f.sh.cfg.OpTimeout.D())
		defer cancel()
		_ = f.Store.DeleteJob(c, id)
		f.mu.Lock()
		if f.forgetting[id]--; f.forgetting[id] <= 0 {
			delete(f.forgetting, id)
		}
		f.mu.Unlock()
		f.poke() // the job, if final and local, may go to Redis now
	}()
}

// LeaseJob leases a job of the local store there (the replica owns the
// jobs it holds locally), and any other in Redis, with no round trip while
// Redis is known to be down.
func (f *failoverStore) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	if f.sh.failOpen {
		if _, err := f.local.GetJob(ctx, id); err == nil {
			return f.local.LeaseJob(ctx, id, now, lease)
		}
	}
	if f.sh.down() {
		if nj := startingJob(ctx); nj != nil {
			nj.redisFailed = true // the write stays local, though Redis be back by then
		}
		return false, fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	leased, err := f.Store.LeaseJob(ctx, id, now, lease)
	if nj := startingJob(ctx); err != nil && nj != nil &&
		(unavailable(err) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil) {
		// A new job's start failed in Redis: counted as its write's
		// failure was when the write came first.
		nj.redisFailed = true
		f.sh.failed("put_job", err)
	}
	return leased, err
}

// newJobStart marks the context of a new job's lease and write
// (startJob): a lease Redis did not answer is the start's failed
// put_job, and under fail_open the write then goes to the local store
// without asking Redis again.
type newJobStart struct{ redisFailed bool }

type newJobStartKey struct{}

// withJobStart returns ctx marked as a new job's start.
func withJobStart(ctx context.Context) context.Context {
	return context.WithValue(ctx, newJobStartKey{}, &newJobStart{})
}

func startingJob(ctx context.Context) *newJobStart {
	nj, _ := ctx.Value(newJobStartKey{}).(*newJobStart)
	return nj
}

// GetJob reads the job from the local store when it holds it (under
// fail_open), else from Redis.
func (f *failoverStore) GetJob(ctx context.Context, id string) (*store.Job, error) {
	if f.sh.failOpen {
		if j, err := f.local.GetJob(ctx, id); err == nil || f.sh.down() {
			return j, err
		}
	} else if f.sh.down() {
		return nil, fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	return f.Store.GetJob(ctx, id)
}

// ListJobs lists, under fail_open, the local store's jobs (those started
// during an outage, which stay there: see PutJob) together with Redis's,
// unless Redis is known to be down; a Redis that does not answer leaves
// the local jobs listed, and counts in ballast_state_errors_total
// {op="list_jobs"}. A job both hold is the local one.
func (f *failoverStore) ListJobs(ctx context.Context, states ...store.JobState) ([]*store.Job, error) {
	if !f.sh.failOpen {
		return f.Store.ListJobs(ctx, states...)
	}
	jobs, err := f.local.ListJobs(ctx, states...)
	if err != nil || f.sh.down() {
		return jobs, err
	}
	remote, err := f.Store.ListJobs(ctx, states...)
	if err != nil {
		if !unavailable(err) {
			return nil, err
		}
		f.sh.failed("list_jobs", err)
		return jobs, nil
	}
	if len(jobs) == 0 {
		return remote, nil
	}
	held := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		held[j.ID] = true
	}
	for _, j := range remote {
		if !held[j.ID] {
			jobs = append(jobs, j)
		}
	}
	slices.SortFunc(jobs, func(a, b *store.Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return jobs, nil
}

// DeleteJob deletes the job where it is held: in the local store when it
// holds it (fail_open), else in Redis.
func (f *failoverStore) DeleteJob(ctx context.Context, id string) error {
	if f.sh.failOpen {
		if _, err := f.local.GetJob(ctx, id); err == nil {
			return f.local.DeleteJob(ctx, id)
		}
	}
	return f.Store.DeleteJob(ctx, id)
}

// Sweep sweeps the local store too: what an outage left there (its jobs
// above all, which hold their places among max_records until removed) is
// removed once expired, whether Redis answers or not. Redis is swept only
// while it is thought to be up.
func (f *failoverStore) Sweep(now time.Time) (int, error) {
	n, err := f.local.Sweep(now)
	if err != nil || f.sh.down() {
		return n, err
	}
	m, err := f.Store.Sweep(now)
	return n + m, err
}

func (f *failoverStore) Close() error {
	f.bg.Wait()
	err := f.Store.Close()
	if lerr := f.local.Close(); err == nil {
		err = lerr
	}
	if cerr := f.sh.client.Close(); err == nil {
		err = cerr
	}
	return err
}

// failoverLimiter is a Redis limiter (one quota for the fleet) with the
// same limit kept locally for fail_open.
type failoverLimiter struct {
	remote *ratelimit.Redis
	local  ratelimit.Limiter
	sh     *shared
}

var _ ratelimit.Limiter = (*failoverLimiter)(nil)

func (f *failoverLimiter) Reserve(key uint64, n int, now time.Time, maxWait time.Duration) (ratelimit.Reservation, error) {
	return f.reserveWithin(key, n, now, maxWait, 0)
}

// reserveWithin is Reserve with the Redis round trip bounded by left too
// (the request's time left; 0: op_timeout only). While Redis is known to
// be down it makes no round trip: fail_open takes the local limit, and
// fail_closed refuses at once. A request whose time is up takes the local
// limit: it will not be sent anyway.
func (f *failoverLimiter) reserveWithin(key uint64, n int, now time.Time, maxWait, left time.Duration) (ratelimit.Reservation, error) {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.Reserve(key, n, now, maxWait)
		}
		return ratelimit.Reservation{}, fmt.Errorf("%w: %w", ratelimit.ErrUnavailable, errKnownDown)
	}
	var res ratelimit.Reservation
	var err error
	switch {
	case left < 0:
		return f.local.Reserve(key, n, now, maxWait)
	case left > 0:
		res, err = f.remote.ReserveWithin(key, n, now, maxWait, left)
	default:
		res, err = f.remote.Reserve(key, n, now, maxWait)
	}
	if err != nil && errors.Is(err, ratelimit.ErrUnavailable) {
		if f.sh.failed("ratelimit", err) {
			return f.local.Reserve(key, n, now, maxWait)
		}
	}
	return res, err
}

// reserve reserves n of l before a request whose time left is left,
// bounding a shared limit's Redis round trip by it.
func reserve(l ratelimit.Limiter, key uint64, n int, now time.Time, maxWait, left time.Duration) (ratelimit.Reservation, error) {
	if f, ok := l.(*failoverLimiter); ok {
		if left <= 0 {
			left = -1 // time is up: no round trip
		}
		return f.reserveWithin(key, n, now, maxWait, left)
	}
	return l.Reserve(key, n, now, maxWait)
}

func (f *failoverLimiter) Quota(key uint64, now time.Time) ratelimit.Quota {
	if f.sh.up.Load() {
		return f.remote.Quota(key, now)
	}
	return f.local.Quota(key, now)
}

func (f *failoverLimiter) Stats() ratelimit.Stats { return f.remote.Stats() }

// syncCooldowns brings the fleet's cool-downs into the local ones every
// interval, so a 429 seen by one replica pauses them all; and, when the
// fleet may lack some of this replica's pauses (shared.coolBehind), it
// publishes those Redis does not hold as long.
func (s *Server) syncCooldowns(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		behind := s.shared.coolBehind.Swap(false)
		for name, ups := range s.cooldownCaps() {
			c, cancel := context.WithTimeout(ctx, s.shared.cfg.OpTimeout.D())
			now := s.clock.Now()
			pauses, err := s.shared.cool.Get(c, name, now)
			cancel()
			if err != nil {
				if behind {
					s.shared.coolBehind.Store(true)
				}
				continue
			}
			if behind {
				s.republishCooldowns(ctx, name, ups, pauses, now)
			}
			for hexCred, until := range pauses {
				cred, ok := parseCredential(hexCred)
				if !ok {
					continue
				}
				warned := false
				for up, limit := range ups {
					// A skew of the replicas' clocks is no reason to warn.
					if _, capped := up.cool.Adopt(cred, until, limit, now); capped && !warned && until.Sub(now) > limit+time.Second {
						warned = true
						s.log.Warn("the fleet holds a pause of an API key longer than retry.max_cooldown; pausing it for retry.max_cooldown",
							"upstream", name, "announced", until.Sub(now).Round(time.Second).String(), "max_cooldown", limit.String())
					}
				}
			}
		}
	}
}

// republishCooldowns publishes the pauses in force of ups, the upstreams
// the fleet calls name, that the fleet's (as just read from Redis) do not
// cover: those whose publication failed or was skipped, or that Redis
// lost. A failure leaves the rest to the next sync.
func (s *Server) republishCooldowns(ctx context.Context, name string, ups map[*upstream]time.Duration, fleet map[string]time.Time, now time.Time) {
	for up := range ups {
		for cred, until := range up.cool.InForce(now) {
			hexCred := cred.String()
			if f, ok := fleet[hexCred]; ok && f.UnixMilli() >= until.UnixMilli() {
				continue
			}
			c, cancel := context.WithTimeout(ctx, s.shared.cfg.OpTimeout.D())
			_, err := s.shared.cool.Extend(c, name, hexCred, until)
			cancel()
			if err != nil {
				s.shared.errs.WithLabelValues("cooldown").Inc()
				s.shared.coolBehind.Store(true)
				return
			}
		}
	}
}

// cooldownCaps returns the upstreams of the table in force by host[:port]
// (the fleet's name for their pauses), each with the longest
// retry.max_cooldown of the routes that send to it: the longest pause this
// replica sets on it itself, and so the longest it takes from the fleet,
// whatever another replica (an older version, another config, a hand in
// Redis) published.
func (s *Server) cooldownCaps() map[string]map[*upstream]time.Duration {
	out := map[string]map[*upstream]time.Duration{}
	for _, r := range s.table.Load().routes {
		for _, t := range r.targets {
			host := string(t.up.host)
			if out[host] == nil {
				out[host] = map[*upstream]time.Duration{}
			}
			out[host][t.up] = max(out[host][t.up], r.maxCooldown)
		}
	}
	return out
}

// extendCooldown pauses t's requests carrying cred until until, but for
// at most limit (the route's retry.max_cooldown) from now, and publishes
// the pause to the fleet when it grew. A hint cut to limit is logged at
// WARN when the pause it sets begins (once per pause, not per request
// that hears it), with the upstream and the length announced, never the
// key.
func (s *Server) extendCooldown(t *target, cred credential, until, now time.Time, limit time.Duration) {
	announced := until.Sub(now)
	if announced > limit {
		until = now.Add(limit)
	}
	extended, began := t.up.cool.extend(cred, until, now)
	if !extended {
		return
	}
	if began && announced > limit {
		s.log.Warn("the upstream asked to pause an API key for longer than retry.max_cooldown; pausing it for retry.max_cooldown",
			"upstream", t.name, "announced", announced.String(), "max_cooldown", limit.String())
	}
	s.shareCooldown(t.name, cred, until)
}

// shareCooldown publishes a cool-down to the fleet without holding up the
// request that saw it.
func (s *Server) shareCooldown(upstream string, cred credential, until time.Time) {
	if s.shared == nil {
		return
	}
	select { // at most a few publications in flight; the next sync catches up
	case s.shared.publishing <- struct{}{}:
	default:
		s.shared.coolBehind.Store(true)
		return
	}
	go func() {
		defer func() { <-s.shared.publishing }()
		c, cancel := context.WithTimeout(context.Background(), s.shared.cfg.OpTimeout.D())
		defer cancel()
		if _, err := s.shared.cool.Extend(c, upstream, cred.String(), until); err != nil {
			s.shared.errs.WithLabelValues("cooldown").Inc()
			s.shared.coolBehind.Store(true)
		}
	}()
}
