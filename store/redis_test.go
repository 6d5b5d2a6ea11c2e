package store

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/internal/redisconn"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

// sharedRedis is the redis-server the contract tests and benchmarks share,
// started on first use and stopped by TestMain. Each store opened on it
// gets its own key prefix, so tests do not see each other's keys.
type sharedRedis struct {
	once   sync.Once
	srv    *redistest.Server
	err    error
	stores atomic.Int64
}

var testRedis sharedRedis

func (r *sharedRedis) addr(t testing.TB) string {
	t.Helper()
	r.once.Do(func() { r.srv, r.err = redistest.New() })
	if r.err != nil {
		t.Fatalf("redis-server for the redis backend: %v", r.err)
	}
	return r.srv.Addr()
}

func (r *sharedRedis) close() {
	if r.srv != nil {
		r.srv.Close()
	}
}

// newTestClient returns a client for addr, closed when t ends (after the
// stores opened later, since cleanups run last-in first-out).
func newTestClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c, err := redisconn.New(redisconn.Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// openTestRedis opens a store with a fresh prefix (unless opts has one) on
// the shared server, with its own client: a replica of its own.
func openTestRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = "t" + strconv.FormatInt(testRedis.stores.Add(1), 10) + ":"
	}
	return openRedisOn(t, newTestClient(t, testRedis.addr(t)), opts)
}

func openRedisOn(t testing.TB, c redis.UniversalClient, opts RedisOptions) *Redis {
	t.Helper()
	s, err := OpenRedis(c, opts)
	if err != nil {
		t.Fatalf("OpenRedis: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// replicas opens n stores sharing one prefix, each with its own client, as
// n ballast replicas would.
func replicas(t *testing.T, n int, opts RedisOptions) []*Redis {
	opts.Prefix = "r" + strconv.FormatInt(testRedis.stores.Add(1), 10) + ":"
	out := make([]*Redis, n)
	for i := range out {
		out[i] = openTestRedis(t, opts)
	}
	return out
}

func TestOpenRedisInvalid(t *testing.T) {
	c := newTestClient(t, "127.0.0.1:1")
	tests := []struct {
		name   string
		client redis.UniversalClient
		prefix string
	}{
		{name: "nil client", prefix: "p:"},
		{name: "brace in prefix", client: c, prefix: "p{x}:"},
		{name: "glob in prefix", client: c, prefix: "p*:"},
		{name: "long prefix", client: c, prefix: strings.Repeat("p", maxPrefixBytes+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := OpenRedis(tt.client, RedisOptions{Prefix: tt.prefix}); !errors.Is(err, ErrInvalid) {
				if s != nil {
					_ = s.Close()
				}
				t.Fatalf("OpenRedis = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestRedisKeyLayout(t *testing.T) {
	k := redisKeys{prefix: "ballast:"}
	got := k.record("tenant/route/{evil}")
	if !strings.HasPrefix(got, "ballast:idem:{") || !strings.HasSuffix(got, "}:tenant/route/{evil}") {
		t.Fatalf("record key = %q", got)
	}
	// The hash tag is the first {...}: 16 hex digits, whatever the key holds.
	tag := got[strings.IndexByte(got, '{')+1 : strings.IndexByte(got, '}')]
	if len(tag) != 16 {
		t.Fatalf("hash tag %q, want 16 hex digits", tag)
	}
	if k.record("a") == k.record("b") || k.record("a") != k.record("a") {
		t.Fatal("record keys are not one per key")
	}
	if k.job("j1") != "ballast:{jobs}:j1" || k.jobIndex() != "ballast:{jobs}" {
		t.Fatalf("job keys = %q, %q", k.job("j1"), k.jobIndex())
	}
}

func TestRedisReplicaReplaysCompletedClaim(t *testing.T) {
	rs := replicas(t, 2, RedisOptions{})
	a, b := rs[0], rs[1]
	ctx := context.Background()
	held := mustClaim(t, a, "tenant/k", args("req", t0))
	if held.Owner != a.Owner() {
		t.Fatalf("owner = %q, want replica A's %q", held.Owner, a.Owner())
	}
	if rec, owned, err := b.Claim(ctx, "tenant/k", args("req", t0.Add(time.Second))); err != nil || owned || rec.State != InFlight || rec.Owner != a.Owner() {
		t.Fatalf("B's Claim while A holds it = %+v, %v, %v; want A's in-flight record", rec, owned, err)
	}
	want := resp(`{"answer":42}`)
	if err := a.Complete(ctx, held, want, t0.Add(2*time.Second), time.Hour); err != nil {
		t.Fatal(err)
	}
	rec, owned, err := b.Claim(ctx, "tenant/k", args("req", t0.Add(time.Minute)))
	if err != nil || owned || rec.State != Completed || !bytes.Equal(rec.Response.Body, want.Body) || rec.Response.Status != 200 {
		t.Fatalf("B's Claim after A completed = %+v, %v, %v; want the stored response", rec, owned, err)
	}
	if _, _, err := b.Claim(ctx, "tenant/k", args("other", t0.Add(time.Minute))); !errors.Is(err, ErrMismatch) {
		t.Fatalf("B's Claim with another body = %v, want ErrMismatch", err)
	}
}

func TestRedisLeaseExpiryAcrossReplicas(t *testing.T) {
	rs := replicas(t, 2, RedisOptions{})
	a, b := rs[0], rs[1]
	ctx := context.Background()
	held := mustClaim(t, a, "k", args("req", t0)) // lease: one minute
	later := t0.Add(2 * time.Minute)
	if rec, err := b.Get(ctx, "k", later); err != nil || rec.State != UnknownOutcome || !rec.StartedAt.Equal(t0) {
		t.Fatalf("B's Get after A's lease = %+v, %v; want unknown_outcome started at t0", rec, err)
	}
	if rec, owned, err := b.Claim(ctx, "k", args("req", later)); err != nil || owned || rec.State != UnknownOutcome {
		t.Fatalf("B's Claim after A's lease = %+v, %v, %v; want unknown_outcome", rec, owned, err)
	}
	take := args("req", later)
	take.TakeOverUnknown = true
	fresh := mustClaim(t, b, "k", take)
	if err := a.Complete(ctx, held, resp("late"), later, time.Hour); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("A's Complete after B took over = %v, want ErrNotHeld", err)
	}
	if err := b.Complete(ctx, fresh, resp("b"), later, time.Hour); err != nil {
		t.Fatal(err)
	}
}

// waitResult runs Wait in a goroutine.
func waitResult(s Store, ctx context.Context, key string) <-chan error {
	done := make(chan error, 1)
	go func() {
		rec, err := s.Wait(ctx, key)
		if err == nil && (rec == nil || rec.State != Completed || string(rec.Response.Body) != "done") {
			err = errors.New("Wait returned " + strconv.Quote(recString(rec)) + ", want the completed record")
		}
		done <- err
	}()
	return done
}

func recString(r *Record) string {
	if r == nil {
		return "<nil>"
	}
	return r.State.String()
}

func TestRedisWaiterOnOtherReplicaWokenByPubSub(t *testing.T) {
	// Polling is set to an hour: only the published message can wake B.
	rs := replicas(t, 2, RedisOptions{PollEvery: time.Hour})
	a, b := rs[0], rs[1]
	held := mustClaim(t, a, "k", args("req", t0))
	done := waitResult(b, context.Background(), "k")
	awaitWaiters(t, b, "k", 1)
	if err := a.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRedisWaiterPollsWhenPubSubIsCut(t *testing.T) {
	const poll = 10 * time.Millisecond // below the subscriber's reconnect back-off
	clock := policy.NewFakeClock(t0)
	prefix := "cut" + strconv.FormatInt(testRedis.stores.Add(1), 10) + ":"
	a := openTestRedis(t, RedisOptions{Prefix: prefix})
	b := openTestRedis(t, RedisOptions{Prefix: prefix, PollEvery: poll, Clock: clock})
	held := mustClaim(t, a, "k", args("req", t0))
	done := waitResult(b, context.Background(), "k")
	awaitWaiters(t, b, "k", 1) // subscribed, read, and blocked on its poll timer

	// Cut every subscriber connection. B's subscriber then waits on its
	// back-off timer (fake time: until advanced) and hears nothing.
	killer := newTestClient(t, testRedis.addr(t))
	if err := killer.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	for clock.Waiters() < 2 { // B's poll timer and its subscriber's back-off
		runtime.Gosched()
	}
	if err := a.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Wait returned before its poll (%v): the cut did not cut", err)
	default:
	}
	clock.Advance(poll) // fires the poll timer only
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRedisWaitersShareOneSubscriberConnection(t *testing.T) {
	s := openTestRedis(t, RedisOptions{PollEvery: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	var dones []<-chan error
	for i := range 20 {
		key := "k" + strconv.Itoa(i)
		mustClaim(t, s, key, args("req", t0))
		dones = append(dones, waitResult(s, ctx, key))
		awaitWaiters(t, s, key, 1)
	}
	admin := newTestClient(t, testRedis.addr(t))
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Other tests' stores may hold subscriptions too; count the channels of
	// this store's prefix per connection.
	conns := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " sub=20 ") {
			conns++
		}
	}
	if conns != 1 {
		t.Fatalf("%d connections subscribed to 20 channels, want 1 shared by 20 waiters:\n%s", conns, list)
	}
	cancel()
	for _, d := range dones {
		if err := <-d; !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v", err)
		}
	}
}

func TestRedisOutageFailsFastAndRecovers(t *testing.T) {
	srv := redistest.Start(t)
	client := newTestClient(t, srv.Addr())
	const opTimeout = 500 * time.Millisecond
	s := openRedisOn(t, client, RedisOptions{OpTimeout: opTimeout, PollEvery: 50 * time.Millisecond})
	ctx := context.Background()
	held := mustClaim(t, s, "k", args("req", t0))
	waiting := make(chan error, 1)
	go func() { _, err := s.Wait(ctx, "k"); waiting <- err }()
	awaitWaiters(t, s, "k", 1)

	srv.Kill()
	if err := <-waiting; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Wait blocked when Redis died = %v, want ErrUnavailable", err)
	}
	ops := []struct {
		name string
		call func() error
	}{
		{"Claim", func() error { _, _, err := s.Claim(ctx, "k2", args("req", t0)); return err }},
		{"Complete", func() error { return s.Complete(ctx, held, resp("x"), t0, time.Hour) }},
		{"Release", func() error { return s.Release(ctx, held) }},
		{"Get", func() error { _, err := s.Get(ctx, "k", t0); return err }},
		{"Wait", func() error { _, err := s.Wait(ctx, "k"); return err }},
		{"PutJob", func() error { return s.PutJob(ctx, testJob("j", JobQueued, t0)) }},
		{"GetJob", func() error { _, err := s.GetJob(ctx, "j"); return err }},
		{"ListJobs", func() error { _, err := s.ListJobs(ctx); return err }},
		{"DeleteJob", func() error { return s.DeleteJob(ctx, "j") }},
		{"Sweep", func() error { _, err := s.Sweep(t0); return err }},
	}
	for _, op := range ops {
		start := time.Now()
		err := op.call()
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with Redis down = %v, want ErrUnavailable", op.name, err)
		}
		// A refused dial fails at once; the bound leaves room for a loaded
		// machine but would catch waiting for go-redis's 5s defaults.
		if took > 2*opTimeout+time.Second {
			t.Errorf("%s with Redis down took %v, want it bounded by the op timeout (%v)", op.name, took, opTimeout)
		}
	}
	// A ctx that ended is reported as such, not as an outage.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(cctx, "k", t0); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Errorf("Get with a cancelled ctx = %v, want context.Canceled", err)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// go-redis dials again on the next command, or within a second once its
	// pool has seen a run of failed dials.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, owned, err := s.Claim(ctx, "k", args("req", t0))
		if err == nil && owned {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Claim after restart = %v, %v; want it to recover", owned, err)
		}
		pause := time.NewTimer(20 * time.Millisecond)
		<-pause.C
	}
	// The subscriber reconnected too: a waiter is woken by a publish again.
	held2 := mustClaim(t, s, "k3", args("req", t0))
	s.pollEvery = time.Hour
	done := waitResult(s, ctx, "k3")
	awaitWaiters(t, s, "k3", 1)
	if err := s.Complete(ctx, held2, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRedisCorruptValue(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	admin := newTestClient(t, testRedis.addr(t))
	if err := admin.Set(context.Background(), s.keys.record("k"), "not a record", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Claim(context.Background(), "k", args("a", t0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Claim over a foreign value = %v, want ErrCorrupt", err)
	}
	if _, err := s.Get(context.Background(), "k", t0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a foreign value = %v, want ErrCorrupt", err)
	}
}

func TestRedisRecordsExpireInRedis(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	admin := newTestClient(t, testRedis.addr(t))
	ctx := context.Background()
	held := mustClaim(t, s, "k", ClaimArgs{Fingerprint: fp("a"), Now: t0, Lease: time.Minute, TTL: 2 * time.Hour})
	pttl := func() time.Duration {
		d, err := admin.PTTL(ctx, s.keys.record("k")).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := pttl(); d <= time.Hour || d > 2*time.Hour {
		t.Fatalf("claim PTTL = %v, want about the record's life (2h)", d)
	}
	if err := s.Complete(ctx, held, resp("r"), t0, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := pttl(); d <= 9*time.Minute || d > 10*time.Minute {
		t.Fatalf("completed PTTL = %v, want the ttl (10m)", d)
	}
}

func TestRedisClaimRetriedAfterLostReplyIsOwned(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	admin := newTestClient(t, testRedis.addr(t))
	a := args("req", t0)
	// What the first run of the claim script wrote before its reply was
	// lost: this store's next claim.
	mine := newClaim("k", a, s.Owner(), s.tokens.next.Load()+1)
	if err := admin.Set(context.Background(), s.keys.record("k"), appendRecord(nil, mine), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	rec, owned, err := s.Claim(context.Background(), "k", a)
	if err != nil || !owned || rec.Token != mine.Token {
		t.Fatalf("Claim finding its own claim = %+v, %v, %v; want owned", rec, owned, err)
	}
}

// TestRedisJobLeaseAcrossReplicas: a job leased by replica A is not B's to
// take while the lease runs (on the now the callers pass), A renews it at
// will, and B takes it once it has run out; then A's renewal is refused.
// The lease key expires in Redis (PX) as well.
func TestRedisJobLeaseAcrossReplicas(t *testing.T) {
	rs := replicas(t, 2, RedisOptions{})
	a, b := rs[0], rs[1]
	ctx := context.Background()
	if err := a.PutJob(ctx, testJob("j", JobRunning, t0)); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		s    *Redis
		now  time.Time
		want bool
	}{
		{"A takes it", a, t0, true},
		{"B while A's lease runs", b, t0.Add(30 * time.Second), false},
		{"A renews", a, t0.Add(50 * time.Second), true},
		{"B within the renewed lease", b, t0.Add(90 * time.Second), false},
		{"B once it has run out", b, t0.Add(111 * time.Second), true},
		{"A's renewal after B took it", a, t0.Add(112 * time.Second), false},
	}
	for _, st := range steps {
		if got, err := st.s.LeaseJob(ctx, "j", st.now, time.Minute); err != nil || got != st.want {
			t.Errorf("%s: LeaseJob = %v, %v; want %v", st.name, got, err, st.want)
		}
	}
	pttl, err := a.client.PTTL(ctx, a.keys.jobLease("j")).Result()
	if err != nil || pttl <= 0 || pttl > time.Minute {
		t.Errorf("lease key PTTL = %v, %v; want (0, 1m]", pttl, err)
	}
	if k := a.keys.jobLease("j"); k == a.keys.job("j") || k == a.keys.job("-lease:j") || k == a.keys.jobIndex() {
		t.Errorf("lease key %q collides with a job key", k)
	}
}
