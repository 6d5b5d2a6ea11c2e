package ratelimit

import (
	"context"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// DefaultShedRetryAfter is the Retry-After suggestion of a shed request
// before any request has completed (so there is no hold time to go by).
const DefaultShedRetryAfter = time.Second

// holdWeight is the weight of the newest hold time in the moving average
// that sizes Retry-After suggestions.
const holdWeight = 0.2

// BulkheadConfig sizes a Bulkhead.
type BulkheadConfig struct {
	// MaxConcurrency is the most requests in flight at once; ≥ 1.
	MaxConcurrency int
	// MaxQueue is the most requests waiting for a slot; ≥ 0. Zero means no
	// queue: a request that finds every slot taken is shed at once.
	MaxQueue int
	// MaxWait bounds the time in the queue; the request's deadline bounds it
	// too. Zero means the deadline (or the context ending) alone bounds it.
	MaxWait time.Duration
}

// Bulkhead bounds the requests in flight (max_concurrency), with a bounded
// queue (max_queue) in front. Waiting requests are admitted normal priority
// first, first come first served within a priority. Excess is shed with an
// *OverloadedError. It is safe for concurrent use; one value may be shared by
// several routes. Create it with NewBulkhead.
type Bulkhead struct {
	cfg BulkheadConfig

	mu       sync.Mutex
	inFlight int
	queues   [2][]*waiter // indexed by Priority
	hold     float64      // moving average of hold time, in nanoseconds
	shed     uint64
}

// waiter is one queued request. state is guarded by Bulkhead.mu.
type waiter struct {
	ready chan struct{} // capacity 1: a grant or displacement never blocks
	state waiterState
}

type waiterState uint8

const (
	waiting   waiterState = iota
	granted               // a slot was handed over; the waiter owns it
	displaced             // a normal request took this low request's place
)

// BulkheadStats are a Bulkhead's numbers for metrics and status.
type BulkheadStats struct {
	MaxConcurrency int
	InFlight       int
	Queued         int // all priorities
	QueuedLow      int
	Shed           uint64 // requests refused with ErrOverloaded since creation
}

// NewBulkhead returns an empty Bulkhead, or an error wrapping
// ErrInvalidConfig.
func NewBulkhead(cfg BulkheadConfig) (*Bulkhead, error) {
	switch {
	case cfg.MaxConcurrency < 1:
		return nil, configError("max_concurrency must be ≥ 1, got %d", cfg.MaxConcurrency)
	case cfg.MaxQueue < 0:
		return nil, configError("max_queue must be ≥ 0, got %d", cfg.MaxQueue)
	case cfg.MaxWait < 0:
		return nil, configError("max_wait must be ≥ 0, got %v", cfg.MaxWait)
	}
	return &Bulkhead{cfg: cfg}, nil
}

// Permit is a slot in a Bulkhead. Release it exactly once, when the request
// is done; the zero Permit releases nothing.
type Permit struct {
	b     *Bulkhead
	start time.Time
}

// Release gives the slot to the next waiting request (normal priority first)
// or frees it. now is used to size Retry-After suggestions. A second Release
// through the same pointer does nothing.
func (p *Permit) Release(now time.Time) {
	if p.b == nil {
		return
	}
	b := p.b
	p.b = nil
	b.release(now.Sub(p.start))
}

// Acquire takes a slot, waiting in the queue if every slot is taken. It
// returns an *OverloadedError when the queue is full (after a normal request
// has displaced the newest low one, if any), when the wait would outlast
// MaxWait or ctx's deadline, or when a normal request displaces this low one
// while it waits; and ctx.Err() when ctx ends while it waits. Taking a free
// slot does not allocate.
func (b *Bulkhead) Acquire(ctx context.Context, clock policy.Clock, p Priority) (Permit, error) {
	if p > PriorityLow {
		p = PriorityLow
	}
	now := clock.Now()
	b.mu.Lock()
	if b.inFlight < b.cfg.MaxConcurrency && b.queuedLocked() == 0 {
		b.inFlight++
		b.mu.Unlock()
		return Permit{b: b, start: now}, nil
	}
	budget, bounded := b.queueBudget(ctx, now)
	if bounded && budget <= 0 {
		return Permit{}, b.shedLocked()
	}
	if b.queuedLocked() >= b.cfg.MaxQueue && !(p == PriorityNormal && b.displaceLowLocked()) {
		return Permit{}, b.shedLocked()
	}
	w := &waiter{ready: make(chan struct{}, 1)}
	b.queues[p] = append(b.queues[p], w)
	b.mu.Unlock()

	var expired <-chan time.Time
	if bounded {
		t := clock.NewTimer(budget)
		defer t.Stop()
		expired = t.C()
	}
	select {
	case <-w.ready:
	case <-expired:
	case <-ctx.Done():
	}
	b.mu.Lock()
	switch w.state {
	case granted:
		b.mu.Unlock()
		permit := Permit{b: b, start: clock.Now()}
		if err := ctx.Err(); err != nil {
			permit.Release(clock.Now())
			return Permit{}, err
		}
		return permit, nil
	case displaced:
		return Permit{}, b.shedLocked()
	}
	b.removeLocked(p, w)
	if err := ctx.Err(); err != nil {
		b.mu.Unlock()
		return Permit{}, err
	}
	return Permit{}, b.shedLocked()
}

// Stats reports the Bulkhead's numbers.
func (b *Bulkhead) Stats() BulkheadStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BulkheadStats{
		MaxConcurrency: b.cfg.MaxConcurrency,
		InFlight:       b.inFlight,
		Queued:         b.queuedLocked(),
		QueuedLow:      len(b.queues[PriorityLow]),
		Shed:           b.shed,
	}
}

// queueBudget is the longest a request may queue at now; bounded is false
// when neither MaxWait nor ctx sets a bound.
func (b *Bulkhead) queueBudget(ctx context.Context, now time.Time) (budget time.Duration, bounded bool) {
	if b.cfg.MaxWait > 0 {
		budget, bounded = b.cfg.MaxWait, true
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := deadline.Sub(now)
		if !bounded || left < budget {
			budget = left
		}
		bounded = true
	}
	return budget, bounded
}

func (b *Bulkhead) queuedLocked() int {
	return len(b.queues[PriorityNormal]) + len(b.queues[PriorityLow])
}

// shedLocked counts a shed request, unlocks b.mu and returns the error.
func (b *Bulkhead) shedLocked() error {
	b.shed++
	err := &OverloadedError{
		RetryAfter: b.retryAfterLocked(),
		InFlight:   b.inFlight,
		Queued:     b.queuedLocked(),
	}
	b.mu.Unlock()
	return err
}

// retryAfterLocked suggests when a shed request might find room: the average
// hold time, once per full round of slots ahead of it.
func (b *Bulkhead) retryAfterLocked() time.Duration {
	if b.hold <= 0 {
		return DefaultShedRetryAfter
	}
	rounds := b.queuedLocked()/b.cfg.MaxConcurrency + 1
	return time.Duration(b.hold) * time.Duration(rounds)
}

// displaceLowLocked sheds the newest waiting low-priority request to make
// room for a normal one, reporting whether there was one.
func (b *Bulkhead) displaceLowLocked() bool {
	low := b.queues[PriorityLow]
	if len(low) == 0 {
		return false
	}
	w := low[len(low)-1]
	low[len(low)-1] = nil
	b.queues[PriorityLow] = low[:len(low)-1]
	w.state = displaced
	w.ready <- struct{}{}
	return true
}

func (b *Bulkhead) removeLocked(p Priority, w *waiter) {
	q := b.queues[p]
	for i, x := range q {
		if x == w {
			copy(q[i:], q[i+1:])
			q[len(q)-1] = nil
			b.queues[p] = q[:len(q)-1]
			return
		}
	}
}

// release records a hold time and hands the slot to the first waiting
// normal request, else the first waiting low one, else frees it.
func (b *Bulkhead) release(held time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if held > 0 {
		if b.hold == 0 {
			b.hold = float64(held)
		} else {
			b.hold += holdWeight * (float64(held) - b.hold)
		}
	}
	for p := range b.queues {
		q := b.queues[p]
		if len(q) == 0 {
			continue
		}
		w := q[0]
		q[0] = nil
		b.queues[p] = q[1:]
		w.state = granted
		w.ready <- struct{}{}
		return
	}
	b.inFlight--
}
