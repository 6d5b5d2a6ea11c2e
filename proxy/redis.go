package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redisconn"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/ballast-proxy/ballast/store"
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
	log        *slog.Logger
	upGauge    prometheus.Gauge
	errs       *prometheus.CounterVec
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
		publishing: make(chan struct{}, 4),
		upGauge:    m.backendUp, errs: m.stateErrors}
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
type failoverStore struct {
	store.Store // redis
	local       store.Store
	sh          *shared
}

func unavailable(err error) bool { return errors.Is(err, store.ErrUnavailable) }

func (f *failoverStore) Claim(ctx context.Context, key string, a store.ClaimArgs) (*store.Record, bool, error) {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.Claim(ctx, key, a)
		}
		return nil, false, fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	rec, owned, err := f.Store.Claim(ctx, key, a)
	if err != nil && unavailable(err) && f.sh.failed("claim", err) {
		return f.local.Claim(ctx, key, a)
	}
	return rec, owned, err
}

// Complete, Release and GetJob, like Claim, make no Redis round trip while
// the health check knows Redis is down: under fail_open the local store
// has what the outage wrote, and a record or job Redis holds could not be
// reached anyway (only after op_timeout).
func (f *failoverStore) Complete(ctx context.Context, held *store.Record, resp *store.Response, now time.Time, ttl time.Duration) error {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.Complete(ctx, held, resp, now, ttl)
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	err := f.Store.Complete(ctx, held, resp, now, ttl)
	if err != nil && (unavailable(err) || errors.Is(err, store.ErrNotHeld)) && f.sh.failOpen {
		if lerr := f.local.Complete(ctx, held, resp, now, ttl); lerr == nil {
			return nil
		}
	}
	return err
}

func (f *failoverStore) Release(ctx context.Context, held *store.Record) error {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.Release(ctx, held)
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	err := f.Store.Release(ctx, held)
	if err != nil && f.sh.failOpen {
		if lerr := f.local.Release(ctx, held); lerr == nil {
			return nil
		}
	}
	return err
}

func (f *failoverStore) Wait(ctx context.Context, key string) (*store.Record, error) {
	if f.sh.down() && f.sh.failOpen {
		return f.local.Wait(ctx, key)
	}
	rec, err := f.Store.Wait(ctx, key)
	if err != nil && unavailable(err) && f.sh.failed("wait", err) {
		return f.local.Wait(ctx, key)
	}
	return rec, err
}

func (f *failoverStore) PutJob(ctx context.Context, j *store.Job) error {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.PutJob(ctx, j)
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	err := f.Store.PutJob(ctx, j)
	if err != nil && unavailable(err) && f.sh.failed("put_job", err) {
		return f.local.PutJob(ctx, j)
	}
	return err
}

func (f *failoverStore) GetJob(ctx context.Context, id string) (*store.Job, error) {
	if f.sh.down() {
		if f.sh.failOpen {
			return f.local.GetJob(ctx, id)
		}
		return nil, fmt.Errorf("%w: %w", store.ErrUnavailable, errKnownDown)
	}
	j, err := f.Store.GetJob(ctx, id)
	if err != nil && f.sh.failOpen {
		if lj, lerr := f.local.GetJob(ctx, id); lerr == nil {
			return lj, nil
		}
	}
	return j, err
}

func (f *failoverStore) Close() error {
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
// interval, so a 429 seen by one replica pauses them all.
func (s *Server) syncCooldowns(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for name, ups := range s.ups.byHost() {
			c, cancel := context.WithTimeout(ctx, s.shared.cfg.OpTimeout.D())
			now := s.clock.Now()
			pauses, err := s.shared.cool.Get(c, name, now)
			cancel()
			if err != nil {
				continue
			}
			for hexCred, until := range pauses {
				if cred, ok := parseCredential(hexCred); ok {
					for _, up := range ups {
						up.cool.Extend(cred, until, now)
					}
				}
			}
		}
	}
}

// extendCooldown pauses t's requests carrying cred until until, and
// publishes the pause to the fleet when it grew.
func (s *Server) extendCooldown(t *target, cred credential, until, now time.Time) {
	if t.up.cool.Extend(cred, until, now) {
		s.shareCooldown(t.name, cred, until)
	}
}

// shareCooldown publishes a cool-down to the fleet without holding up the
// request that saw it.
func (s *Server) shareCooldown(upstream string, cred credential, until time.Time) {
	if s.shared == nil {
		return
	}
	select { // at most a few publications in flight; the poller catches up
	case s.shared.publishing <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-s.shared.publishing }()
		c, cancel := context.WithTimeout(context.Background(), s.shared.cfg.OpTimeout.D())
		defer cancel()
		if _, err := s.shared.cool.Extend(c, upstream, cred.String(), until); err != nil {
			s.shared.errs.WithLabelValues("cooldown").Inc()
		}
	}()
}
