package store

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// MemoryOptions configure a Memory store. The zero value uses the defaults.
type MemoryOptions struct {
	Limits
	// Scannable keeps the records in the order of their claims, for
	// Scan, at the cost of one small allocation per claim. Off by
	// default: a store opened without it walks nothing.
	Scannable bool
}

// Memory is the in-process Store: fast, bounded, and lost on restart (so it
// never reports UnknownOutcome after a restart; only an expired lease does).
//
// Claims in flight live in a map bounded by MaxRecords (ErrFull beyond);
// completed records live in an LRU of MaxRecords entries, so under pressure
// the least recently used stored response is forgotten and a later duplicate
// of it runs again.
type Memory struct {
	lim    Limits
	tokens *tokens
	wakeup *notifier

	mu       sync.Mutex
	closed   bool
	inflight map[string]*Record
	done     *simplelru.LRU[string, *Record]
	jobs     map[string]*Job
	// order lists the records (in flight and completed) in the order they
	// were claimed, for Scan: slots maps each key held to its place (nil
	// unless the store is Scannable).
	order scanList
	slots map[string]*slot
}

var _ Store = (*Memory)(nil)

// OpenMemory returns an empty Memory store.
func OpenMemory(opts MemoryOptions) *Memory {
	lim := opts.Limits.withDefaults()
	m := &Memory{
		lim:      lim,
		tokens:   newTokens(),
		wakeup:   newNotifier(),
		inflight: make(map[string]*Record),
		jobs:     make(map[string]*Job),
	}
	if opts.Scannable {
		m.slots = make(map[string]*slot)
	}
	m.order.init()
	// Every removal from done (evicted, swept, taken over, forgotten) goes
	// through onEvict, with m.mu held: the record leaves the scan order.
	done, err := simplelru.NewLRU[string, *Record](lim.MaxRecords, func(key string, _ *Record) { m.unlink(key) })
	if err != nil {
		// NewLRU fails only for a size ≤ 0, which withDefaults rules out.
		panic("store: " + err.Error())
	}
	m.done = done
	return m
}

// Owner returns the instance id written into this store's claims.
func (m *Memory) Owner() string { return m.lim.Owner }

// lookup returns the stored record of key, marking a completed one as
// recently used. m.mu must be held.
func (m *Memory) lookup(key string) *Record {
	if r := m.inflight[key]; r != nil {
		return r
	}
	r, _ := m.done.Get(key)
	return r
}

// Claim implements Store.
func (m *Memory) Claim(ctx context.Context, key string, args ClaimArgs) (*Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if err := checkKey("key", key); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, false, ErrClosed
	}
	cur := m.lookup(key)
	decision, view := decideClaim(cur, args)
	switch decision {
	case mismatch:
		m.mu.Unlock()
		return view, false, mismatchError(key)
	case answerExisting:
		m.mu.Unlock()
		return view, false, nil
	}
	replaced := cur != nil && m.inflight[key] == cur
	if cur != nil {
		delete(m.inflight, key)
		m.done.Remove(key)
		m.unlink(key)
	}
	if len(m.inflight) >= m.lim.MaxRecords {
		m.mu.Unlock()
		if replaced {
			m.wakeup.wake(key)
		}
		return nil, false, ErrFull
	}
	rec := newClaim(key, args, m.lim.Owner, m.tokens.new())
	m.inflight[key] = rec
	m.link(key, rec.Token)
	m.mu.Unlock()
	if replaced {
		m.wakeup.wake(key)
	}
	return rec, true, nil
}

// Complete implements Store.
func (m *Memory) Complete(ctx context.Context, held *Record, resp *Response, now time.Time, ttl time.Duration) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	if resp == nil {
		return invalidf("nil response")
	}
	if n := resp.Size(); n > m.lim.MaxResponseBytes {
		return tooLarge("response", n, m.lim.MaxResponseBytes)
	}
	own := resp.clone()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	cur := m.inflight[held.Key]
	if !holds(cur, held) {
		m.mu.Unlock()
		return ErrNotHeld
	}
	delete(m.inflight, held.Key)
	m.done.Add(held.Key, completed(cur, own, now, ttl))
	m.mu.Unlock()
	m.wakeup.wake(held.Key)
	return nil
}

// Release implements Store.
func (m *Memory) Release(ctx context.Context, held *Record) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if !holds(m.inflight[held.Key], held) {
		m.mu.Unlock()
		return ErrNotHeld
	}
	delete(m.inflight, held.Key)
	m.unlink(held.Key)
	m.mu.Unlock()
	m.wakeup.wake(held.Key)
	return nil
}

// Wait implements Store.
func (m *Memory) Wait(ctx context.Context, key string) (*Record, error) {
	return waitFor(ctx, m.wakeup, key, func() (*Record, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if r := m.inflight[key]; r != nil {
			return r, nil
		}
		r, _ := m.done.Peek(key)
		return r, nil
	}, m.isClosed)
}

// Watch returns a channel closed the next time a claim on key ends in this
// store (completed, released, taken over or swept) or the store closes,
// whether or not the store held the key when Watch was called; stop must
// be called once the caller no longer watches. It lets a caller waiting
// elsewhere (in another store) learn that an answer was kept here.
func (m *Memory) Watch(key string) (changed <-chan struct{}, stop func()) {
	return m.wakeup.subscribe(key)
}

func (m *Memory) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Get implements Store. It does not allocate unless the record's lease has
// expired.
func (m *Memory) Get(ctx context.Context, key string, now time.Time) (*Record, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	r := m.lookup(key)
	m.mu.Unlock()
	if r == nil || r.expired(now) {
		return nil, ErrNotFound
	}
	return r.viewAt(now), nil
}

// PutJob implements Store.
func (m *Memory) PutJob(ctx context.Context, job *Job) error {
	if err := m.lim.checkJob(job); err != nil {
		return err
	}
	own := job.clone()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if _, ok := m.jobs[own.ID]; !ok && len(m.jobs) >= m.lim.MaxJobs {
		return ErrFull
	}
	m.jobs[own.ID] = own
	return nil
}

// GetJob implements Store.
func (m *Memory) GetJob(ctx context.Context, id string) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	j := m.jobs[id]
	if j == nil {
		return nil, ErrNotFound
	}
	c := *j
	return &c, nil
}

// ListJobs implements Store.
func (m *Memory) ListJobs(ctx context.Context, states ...JobState) ([]*Job, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	var out []*Job
	for _, j := range m.jobs {
		if matchState(j.State, states) {
			c := *j
			out = append(out, &c)
		}
	}
	m.mu.Unlock()
	sortJobs(out)
	return out, nil
}

// DeleteJob implements Store.
func (m *Memory) DeleteJob(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	delete(m.jobs, id)
	return nil
}

// LeaseJob implements Store. The process owns every job of a Memory store:
// it reports false only for a final job.
func (m *Memory) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	if err := checkKey("job id", id); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false, ErrClosed
	}
	j := m.jobs[id]
	return j == nil || j.State.Pending(), nil
}

// Sweep implements Store.
func (m *Memory) Sweep(now time.Time) (int, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return 0, ErrClosed
	}
	var woken []string
	for k, r := range m.inflight {
		if r.expired(now) {
			delete(m.inflight, k)
			m.unlink(k)
			woken = append(woken, k)
		}
	}
	removed := len(woken)
	for _, k := range m.done.Keys() {
		if r, ok := m.done.Peek(k); ok && r.expired(now) {
			m.done.Remove(k)
			removed++
		}
	}
	for id, j := range m.jobs {
		if !j.ExpiresAt.IsZero() && !now.Before(j.ExpiresAt) {
			delete(m.jobs, id)
			removed++
		}
	}
	m.mu.Unlock()
	for _, k := range woken {
		m.wakeup.wake(k)
	}
	return removed, nil
}

// Len reports how many records (in flight and completed, including expired
// ones not yet swept) the store holds.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.inflight) + m.done.Len()
}

// Close implements Store. It is idempotent.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.wakeup.closeAll()
	return nil
}
