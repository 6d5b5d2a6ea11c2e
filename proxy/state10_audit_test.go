package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/store"
)

// Audit probes of fail_open reconciliation (reconcile.go), of the fleet's
// capped cool-downs (cooldowns.Adopt) and of async jobs across a reload.

// st10Rig is a fail_open failover store on a real Redis, Redis up, with
// its remote (the Redis store's Put) wrapped so a probe can act between
// the pass's reads and its writes.
type st10Rig struct {
	f      *failoverStore
	rs     *store.Redis
	client *redis.Client
	clock  *policy.FakeClock
	logs   *bytes.Buffer
	remote *st10Remote
}

// st10Remote wraps the Redis store's Put: before the n-th Put (from 1),
// before[n] runs, and fail[n] makes that Put fail as Redis gone would.
type st10Remote struct {
	recordPutter
	mu     sync.Mutex
	n      int
	before map[int]func()
	fail   map[int]bool
}

func (r *st10Remote) Put(ctx context.Context, rec *store.Record, now time.Time) (*store.Record, bool, error) {
	r.mu.Lock()
	r.n++
	hook, fail := r.before[r.n], r.fail[r.n]
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	if fail {
		return nil, false, fmt.Errorf("%w: redis went away mid-pass", store.ErrUnavailable)
	}
	return r.recordPutter.Put(ctx, rec, now)
}

func st10NewRig(t *testing.T, prefix string) *st10Rig {
	t.Helper()
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	rs, err := store.OpenRedis(client, store.RedisOptions{Prefix: prefix, OpTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	sh := &shared{client: client, failOpen: true, log: slog.New(slog.NewJSONHandler(logs, nil)),
		back:       make(chan struct{}, 1),
		errs:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"op"}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"result"})}
	sh.cfg.OpTimeout = config.Duration(time.Second)
	sh.up.Store(true)
	clock := policy.NewFakeClock(time.Now())
	f := newFailoverStore(rs, store.Limits{}, sh, clock)
	remote := &st10Remote{recordPutter: f.remote, before: map[int]func(){}, fail: map[int]bool{}}
	f.remote = remote
	t.Cleanup(func() { _ = f.Close() })
	return &st10Rig{f: f, rs: rs, client: client, clock: clock, logs: logs, remote: remote}
}

// answerLocally makes a record of key in the local store, as the outage
// would: claimed and completed there with body, living ttl.
func (g *st10Rig) answerLocally(t *testing.T, key, body string, ttl time.Duration) *store.Record {
	t.Helper()
	ctx := context.Background()
	now := g.clock.Now()
	held, owned, err := g.f.local.Claim(ctx, key, store.ClaimArgs{Fingerprint: [32]byte{1}, Now: now, Lease: time.Minute, TTL: ttl})
	if err != nil || !owned {
		t.Fatalf("local claim of %s: %v %v", key, owned, err)
	}
	if err := g.f.local.Complete(ctx, held, &store.Response{Status: 200, Body: []byte(body)}, now, ttl); err != nil {
		t.Fatal(err)
	}
	return held
}

func (g *st10Rig) reconciled(result string) float64 {
	return st10Count(g.f.sh.reconciled.WithLabelValues(result))
}

func st10Count(c prometheus.Counter) float64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func (g *st10Rig) redisBody(t *testing.T, key string) string {
	t.Helper()
	rec, err := g.rs.Get(context.Background(), key, g.clock.Now())
	if errors.Is(err, store.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if rec.Response == nil {
		return rec.State.String()
	}
	return string(rec.Response.Body)
}

// st10RecordKey is the Redis key of the record of key under prefix (the
// form of store's redisKeys.record).
func st10RecordKey(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + "idem:{" + hex.EncodeToString(sum[:8]) + "}:" + key
}

// TestState10CorruptRecordDoesNotStallReconciliation: a value under one
// key that Redis holds and that is not a record (an older version's, a
// hand's) must cost that key only. Before the fix, the pass stopped at it
// with ErrCorrupt on every pass (and was retried every second, forever,
// without counting an error), so the records after it never reached
// Redis and the fleet ran their calls again.
func TestState10CorruptRecordDoesNotStallReconciliation(t *testing.T) {
	g := st10NewRig(t, "st10c:")
	ctx := context.Background()
	// "bad" comes first in the pass (least recently used).
	g.answerLocally(t, "bad", "local-bad", time.Hour)
	g.answerLocally(t, "good", "local-good", time.Hour)
	if err := g.client.Set(ctx, st10RecordKey("st10c:", "bad"), "not a record", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if left := g.f.reconcilePass(ctx); left {
		t.Errorf("the pass reported itself cut short: it would be retried every second, forever")
	}
	if got := g.redisBody(t, "good"); got != "local-good" {
		t.Fatalf("Redis holds %q for the key after the corrupt one, want its local answer published", got)
	}
	if n := g.reconciled(reconcilePublished); n != 1 {
		t.Errorf("published %v, want 1", n)
	}
	// The corrupt key stays answered locally, and Redis's value untouched.
	if rec, ok := g.f.heldLocally("bad"); !ok || string(rec.Response.Body) != "local-bad" {
		t.Errorf("the local record of the corrupt key was dropped: %+v", rec)
	}
	if v, _ := g.client.Get(ctx, st10RecordKey("st10c:", "bad")).Result(); v != "not a record" {
		t.Errorf("the corrupt value was overwritten: %q", v)
	}
}

// TestState10RedisGoesAwayMidPass: Redis failing again in the middle of
// a pass leaves what is not yet written in the local store, still
// answered there (never lost, never run again on this replica), counts
// one reconcile error, and the next pass writes the rest. The log names
// no key.
func TestState10RedisGoesAwayMidPass(t *testing.T) {
	g := st10NewRig(t, "st10m:")
	ctx := context.Background()
	for _, k := range []string{"key-a", "key-b", "key-c"} {
		g.answerLocally(t, k, "answer-"+k, time.Hour)
	}
	g.remote.fail[2] = true
	if left := g.f.reconcilePass(ctx); !left {
		t.Fatal("a pass Redis cut short did not report it: it would not be tried again")
	}
	if n := st10Count(g.f.sh.errs.WithLabelValues("reconcile")); n != 1 {
		t.Errorf("ballast_state_errors_total{op=reconcile} = %v, want 1", n)
	}
	if got := g.redisBody(t, "key-a"); got != "answer-key-a" {
		t.Errorf("the record written before Redis went away: %q in Redis", got)
	}
	if _, ok := g.f.heldLocally("key-a"); ok {
		t.Error("the record written to Redis is still answered locally")
	}
	for _, k := range []string{"key-b", "key-c"} {
		if rec, ok := g.f.heldLocally(k); !ok || string(rec.Response.Body) != "answer-"+k {
			t.Errorf("%s, not written, is no longer answered locally: %+v", k, rec)
		}
		if got := g.redisBody(t, k); got != "" {
			t.Errorf("%s in Redis after a failed write: %q", k, got)
		}
	}
	if left := g.f.reconcilePass(ctx); left {
		t.Fatal("the next pass was cut short too")
	}
	for _, k := range []string{"key-b", "key-c"} {
		if got := g.redisBody(t, k); got != "answer-"+k {
			t.Errorf("%s in Redis after the next pass: %q", k, got)
		}
	}
	if n := g.reconciled(reconcilePublished); n != 3 {
		t.Errorf("published %v, want 3", n)
	}
	if strings.Contains(g.logs.String(), "key-") {
		t.Errorf("the log names a key: %s", g.logs.String())
	}
}

// TestState10ClaimEndsWhilePassPublishes: a local call that ends between
// the pass's read of its claim and the claim's write to Redis. Released
// (no answer kept): the same pass frees the key in Redis, so no replica
// waits on a claim nobody will finish. Completed: the next pass (the call's
// end asked for one) completes the published claim with the answer.
func TestState10ClaimEndsWhilePassPublishes(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(f *failoverStore, held *store.Record) error
		want string // in Redis after the passes; "" none
	}{
		{name: "released", end: func(f *failoverStore, held *store.Record) error {
			return f.Release(context.Background(), held)
		}},
		{name: "completed", want: "answer", end: func(f *failoverStore, held *store.Record) error {
			return f.Complete(context.Background(), held, &store.Response{Status: 200, Body: []byte("answer")}, f.clock.Now(), time.Hour)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := st10NewRig(t, "st10e"+tt.name+":")
			ctx := context.Background()
			held, owned, err := g.f.local.Claim(ctx, "k", store.ClaimArgs{Fingerprint: [32]byte{1}, Now: g.clock.Now(), Lease: time.Minute, TTL: time.Hour})
			if err != nil || !owned {
				t.Fatal(owned, err)
			}
			g.remote.before[1] = func() {
				if err := tt.end(g.f, held); err != nil {
					t.Errorf("the call's end: %v", err)
				}
			}
			g.f.reconcilePass(ctx)
			select {
			case <-g.f.sh.back:
			default:
				t.Fatal("the call's end asked for no pass")
			}
			g.f.reconcilePass(ctx)
			if got := g.redisBody(t, "k"); got != tt.want {
				t.Fatalf("Redis holds %q for the key, want %q", got, tt.want)
			}
			if tt.want == "" {
				// Another replica runs the call now, rather than wait.
				other, err := store.OpenRedis(g.client, store.RedisOptions{Prefix: "st10e" + tt.name + ":"})
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				if _, owned, err := other.Claim(ctx, "k", store.ClaimArgs{Fingerprint: [32]byte{1}, Now: g.clock.Now(), TTL: time.Hour}); !owned || err != nil {
					t.Errorf("another replica's claim of the freed key: owned %v, %v", owned, err)
				}
			}
			if len(g.f.publishedClaims()) != 0 {
				t.Errorf("published claims left: %v", g.f.publishedClaims())
			}
		})
	}
}

// TestState10RecordExpiresMidPass: a record whose ttl runs out while the
// pass writes the ones before it is not written to Redis, where it would
// have answered for the pass's length past its ttl (the pass read the
// clock once, at its start, before the fix).
func TestState10RecordExpiresMidPass(t *testing.T) {
	g := st10NewRig(t, "st10x:")
	ctx := context.Background()
	g.answerLocally(t, "long", "l", time.Hour)
	g.answerLocally(t, "short", "s", 20*time.Minute)
	g.remote.before[1] = func() { g.clock.Advance(30 * time.Minute) } // a slow write
	if left := g.f.reconcilePass(ctx); left {
		t.Fatal("cut short")
	}
	if n, _ := g.client.Exists(ctx, st10RecordKey("st10x:", "short")).Result(); n != 0 {
		pttl, _ := g.client.PTTL(ctx, st10RecordKey("st10x:", "short")).Result()
		t.Errorf("a record expired before its write is in Redis for %v more", pttl)
	}
	if n, _ := g.client.Exists(ctx, st10RecordKey("st10x:", "long")).Result(); n != 1 {
		t.Error("the live record was not written")
	}
}

// TestState10AdoptTakesLongPauseWhenMemoryFull: the memory of capped
// fleet pauses shares the pauses' bound (maxCooldowns). When it is full
// of capped pauses not over, a new year-long fleet pause is still taken
// for the cap (before the fix it was not taken at all: the key ran on
// into the provider's 429s); only its no-renew memory is lost. A pause
// remembered is still not renewed.
func TestState10AdoptTakesLongPauseWhenMemoryFull(t *testing.T) {
	var c cooldowns
	now := time.Now()
	year := now.Add(365 * 24 * time.Hour)
	cred := func(i int) credential {
		var k credential
		k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
		return k
	}
	for i := range maxCooldowns {
		if _, capped := c.Adopt(cred(i), year, time.Minute, now); !capped {
			t.Fatalf("fleet pause %d not capped", i)
		}
	}
	// The capped pauses (a minute each) are over; their memory is not.
	later := now.Add(2 * time.Minute)
	extended, capped := c.Adopt(cred(maxCooldowns), year, time.Hour, later)
	if !extended || !capped {
		t.Fatalf("Adopt with the memory full = extended %v capped %v; want the pause taken for the cap", extended, capped)
	}
	if got := c.until[cred(maxCooldowns)]; got != later.Add(time.Hour).UnixNano() {
		t.Errorf("paused until %v, want the cap, %v", time.Unix(0, got), later.Add(time.Hour))
	}
	if extended, _ := c.Adopt(cred(0), year, time.Hour, later); extended {
		t.Error("a capped pause remembered was renewed")
	}
	if len(c.capped) > maxCooldowns {
		t.Errorf("the memory of capped pauses grew to %d, past %d", len(c.capped), maxCooldowns)
	}
}

// TestState10JobRunsOnTheRouteThatAcceptedIt: a reload between accepting
// a job and starting it (the runner is a goroutine) does not change or
// fail it: it runs through the route that accepted it, like a request in
// flight. Before the fix, runJob looked the route up by name in the
// table in force: a removed route failed the job, a changed one sent it
// to the new upstream. A job resumed from the store (no route at hand)
// still takes the route in force.
func TestState10JobRunsOnTheRouteThatAcceptedIt(t *testing.T) {
	var oldHits, newHits atomic.Int64
	oldUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		oldHits.Add(1)
		_, _ = w.Write([]byte("old"))
	}))
	t.Cleanup(oldUp.Close)
	newUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		newHits.Add(1)
		_, _ = w.Write([]byte("new"))
	}))
	t.Cleanup(newUp.Close)
	s := newStatusServer(t, fmt.Sprintf(`
routes:
  - {name: job, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, oldUp.URL))
	var accepting *route
	for _, r := range s.table.Load().routes {
		if r.name == "job" {
			accepting = r
		}
	}
	apply := func(yaml string) {
		t.Helper()
		cfg, err := config.Parse([]byte(yaml), config.Source{Environ: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(cfg); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	run := func(id string, r *route) *store.Job {
		t.Helper()
		now := time.Now()
		job := &store.Job{ID: id, Tenant: "t", Route: "job", State: store.JobQueued,
			CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour),
			Request: store.Request{Method: "GET", URI: "/report"}}
		if err := s.state.PutJob(ctx, job); err != nil {
			t.Fatal(err)
		}
		s.launch(job, r)
		done, ok := s.jobs.running(id)
		if ok {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the job did not end")
			}
		}
		got, err := s.state.GetJob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tt := range []struct {
		name, yaml string
	}{
		{name: "changed", yaml: fmt.Sprintf(`
routes:
  - {name: job, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, newUp.URL)},
		{name: "removed", yaml: fmt.Sprintf(`
routes:
  - {name: other, match: {path_prefix: /}, upstream: %q}
`, newUp.URL)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			apply(tt.yaml)
			before := oldHits.Load()
			got := run("st10-"+tt.name, accepting)
			var body string
			if got.Response != nil {
				body = string(got.Response.Body)
			}
			if got.State != store.JobSucceeded || body != "old" {
				t.Fatalf("the job accepted before the reload: %v %q (%s); want it run through its route", got.State, body, got.LastError)
			}
			if oldHits.Load() != before+1 || newHits.Load() != 0 {
				t.Errorf("upstream calls: old +%d, new %d; want the accepting route's upstream once", oldHits.Load()-before, newHits.Load())
			}
		})
	}
	// Resumed with the route gone: it fails, saying so.
	if got := run("st10-resumed", nil); got.State != store.JobFailed || !strings.Contains(got.LastError, "no longer exists") {
		t.Errorf("a resumed job whose route is gone: %v %q", got.State, got.LastError)
	}
}

// st10RedisClaim claims key in Redis through the failover store (Redis
// up): this replica runs the call.
func (g *st10Rig) redisClaim(t *testing.T, key string) *store.Record {
	t.Helper()
	held, owned, err := g.f.Claim(context.Background(), key, store.ClaimArgs{Fingerprint: [32]byte{3}, Now: g.clock.Now(), Lease: time.Minute, TTL: time.Hour})
	if err != nil || !owned || g.f.localClaim(held) {
		t.Fatalf("Redis claim of %s: owned %v, %v (local %v)", key, owned, err, g.f.localClaim(held))
	}
	return held
}

// TestState10RunningRedisClaimIsNotRepublished: a pass writes back only
// the running Redis claims Redis lost. One Redis still holds is not
// "published": before the fix, every pass counted every call in flight
// in Redis in ballast_state_reconciled_total{result="published"} (and in
// its INFO line as a record made during the outage), as Put reads its
// own claim back as the retry of a write.
func TestState10RunningRedisClaimIsNotRepublished(t *testing.T) {
	g := st10NewRig(t, "st10r:")
	ctx := context.Background()
	held := g.redisClaim(t, "running")
	for range 3 {
		g.f.reconcilePass(ctx)
	}
	if n := g.reconciled(reconcilePublished); n != 0 {
		t.Errorf("published %v for a claim Redis never lost, want 0", n)
	}
	if strings.Contains(g.logs.String(), "written to it") {
		t.Errorf("the log reports records written: %s", g.logs.String())
	}
	// Redis loses it (restarted empty): the next pass writes it back, once.
	if err := g.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	g.f.reconcilePass(ctx)
	g.f.reconcilePass(ctx)
	if n := g.reconciled(reconcilePublished); n != 1 {
		t.Errorf("published %v after Redis lost the claim, want 1", n)
	}
	if got := g.redisBody(t, "running"); got != store.InFlight.String() {
		t.Fatalf("Redis holds %q, want the claim in flight again", got)
	}
	if err := g.f.Complete(ctx, held, &store.Response{Status: 200, Body: []byte("done")}, g.clock.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := g.redisBody(t, "running"); got != "done" {
		t.Errorf("Redis holds %q after the call, want its answer", got)
	}
}

// TestState10LostRedisClaimEndingDuringPassIsNotResurrected: Redis lost
// a claim this replica runs (it restarted empty), and the call ends with
// no answer kept (a 5xx; the key is released) just as the pass writes the
// claim back. The key must end up free in Redis: before the fix, the pass
// wrote back a claim nobody would finish, so every replica answered the
// agent's retry 409 in_progress, then outcome_unknown, until it expired.
func TestState10LostRedisClaimEndingDuringPassIsNotResurrected(t *testing.T) {
	g := st10NewRig(t, "st10l:")
	ctx := context.Background()
	held := g.redisClaim(t, "k")
	if err := g.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	g.remote.before[1] = func() {
		if err := g.f.Release(ctx, held); err != nil && !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("release: %v", err)
		}
	}
	g.f.reconcilePass(ctx)
	if got := g.redisBody(t, "k"); got != "" {
		t.Fatalf("Redis holds %q for a key whose call ended with no answer, want it free", got)
	}
	if n := g.reconciled(reconcilePublished); n != 0 {
		t.Errorf("published %v, want 0", n)
	}
}

// TestState10FinishedLocalJobKeepsItsCaller: a finished job made locally
// is written to Redis as it is, its caller (tenant) with it, so that a
// poll from another caller on any replica still finds no job; the local
// copy is dropped. A pending one stays local.
func TestState10FinishedLocalJobKeepsItsCaller(t *testing.T) {
	g := st10NewRig(t, "st10j:")
	ctx := context.Background()
	now := g.clock.Now()
	for _, j := range []*store.Job{
		{ID: "done", Tenant: "tenant-a", Route: "r", State: store.JobSucceeded, CreatedAt: now, UpdatedAt: now,
			ExpiresAt: now.Add(time.Hour), Request: store.Request{Method: "POST", URI: "/x"}, Response: &store.Response{Status: 200, Body: []byte("ok")}},
		{ID: "pending", Tenant: "tenant-a", Route: "r", State: store.JobRunning, CreatedAt: now, UpdatedAt: now,
			ExpiresAt: now.Add(time.Hour), Request: store.Request{Method: "POST", URI: "/x"}},
	} {
		if err := g.f.local.PutJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if left := g.f.reconcilePass(ctx); left {
		t.Fatal("cut short")
	}
	got, err := g.rs.GetJob(ctx, "done")
	if err != nil || got.Tenant != "tenant-a" || got.State != store.JobSucceeded || string(got.Response.Body) != "ok" {
		t.Fatalf("the job in Redis: %+v, %v; want it with its tenant", got, err)
	}
	if _, err := g.f.local.GetJob(ctx, "done"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the published job is still local: %v", err)
	}
	if _, err := g.rs.GetJob(ctx, "pending"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a running job was published: %v", err)
	}
	if _, err := g.f.local.GetJob(ctx, "pending"); err != nil {
		t.Errorf("the running job left the local store: %v", err)
	}
}
