package redisconn

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/policy"
)

// DefaultHealthEvery is the probe interval WatchHealth uses when every ≤ 0.
const DefaultHealthEvery = time.Second

// WatchHealth probes client with PING at once and then every interval until
// ctx ends, and calls onChange with the first result and with every change
// (up == true: PING answered within every). It blocks; run it in a
// goroutine. The proxy uses it for /readyz and for the state_unavailable
// metric; the backends themselves do not need it (each operation fails fast
// with ErrUnavailable and go-redis reconnects on its own).
func WatchHealth(ctx context.Context, client redis.UniversalClient, clock policy.Clock, every time.Duration, onChange func(up bool)) {
	if every <= 0 {
		every = DefaultHealthEvery
	}
	known, last := false, false
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		up := client.Ping(pctx).Err() == nil
		cancel()
		if ctx.Err() != nil {
			return
		}
		if !known || up != last {
			known, last = true, up
			onChange(up)
		}
		t := clock.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
