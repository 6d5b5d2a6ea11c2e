package store

import (
	"context"
	"fmt"
	"time"
)

// Wait implements Store. It returns the Completed record once the claim it
// waited on completes (on any replica), nil when that claim was released,
// taken over or removed, an error wrapping ctx's error when ctx ends,
// ErrClosed when the store is closed, and an error wrapping ErrUnavailable
// when a read fails. A claim whose owner died keeps Wait blocked until ctx
// ends (or Redis expires the record), as in the other backends.
//
// Wake-ups come from the key's channel; every PollEvery the record is read
// again regardless, so a lost message delays a waiter by at most PollEvery,
// and an outage is noticed within PollEvery.
func (s *Redis) Wait(ctx context.Context, key string) (*Record, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if err := checkKey("key", key); err != nil {
		return nil, err
	}
	c := s.hub.join(s.keys.record(key))
	defer s.hub.leave(c)
	// Read only once the subscription is in place (or after a poll interval
	// or the op timeout, whichever is shorter: polling covers the rest), so
	// that a completion published after the read is seen.
	if err := s.pause(ctx, key, c.ready, min(s.pollEvery, s.opTimeout)); err != nil {
		return nil, err
	}
	var token uint64
	for {
		if s.closed.Load() {
			return nil, ErrClosed
		}
		wake := s.hub.wakeChan(c)
		rec, err := s.read(ctx, key)
		if err != nil {
			return nil, err
		}
		switch {
		case rec == nil:
			return nil, nil
		case token != 0 && rec.Token != token:
			return nil, nil
		case rec.State != InFlight:
			return rec, nil
		}
		token = rec.Token
		s.hub.block(c, 1)
		err = s.pause(ctx, key, wake, s.pollEvery)
		s.hub.block(c, -1)
		if err != nil {
			return nil, err
		}
	}
}

// pause waits for ch, for d, for the end of ctx (an error wrapping
// ctx.Err()) or for the store's Close (ErrClosed).
func (s *Redis) pause(ctx context.Context, key string, ch <-chan struct{}, d time.Duration) error {
	t := s.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("store: wait for %q: %w", key, ctx.Err())
	case <-s.hub.closing:
		return ErrClosed
	}
}
