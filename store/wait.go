package store

import (
	"context"
	"fmt"
)

// waitFor implements Store.Wait for a backend whose waiters are all in this
// process. read returns the stored record of key (nil when absent) without
// applying the lease; closed reports whether the store was closed.
//
// Wait returns the record only when the claim it started waiting on
// finished; if the key changed hands meanwhile it returns nil, so the
// caller's next Claim re-checks the fingerprint.
func waitFor(ctx context.Context, n *notifier, key string, read func() (*Record, error), closed func() bool) (*Record, error) {
	var token uint64
	for {
		if closed() {
			return nil, ErrClosed
		}
		ch, done := n.subscribe(key)
		rec, err := read()
		if err != nil {
			done()
			return nil, err
		}
		switch {
		case rec == nil:
			done()
			return nil, nil
		case token != 0 && rec.Token != token:
			done()
			return nil, nil
		case rec.State != InFlight:
			done()
			return rec, nil
		}
		token = rec.Token
		select {
		case <-ch:
			done()
		case <-ctx.Done():
			done()
			return nil, fmt.Errorf("store: wait for %q: %w", key, ctx.Err())
		}
	}
}
