package policy

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Budget defaults, as in Finagle's RetryBudget and Linkerd's retry budget.
const (
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10
	DefaultBudgetTTL          = 10 * time.Second
)

const (
	budgetSlots = 10   // the ttl window is kept as this many slots of ttl/10
	budgetScale = 1000 // deposit units per request; fractions of a retry stay integral
	// maxReserve keeps reserve + balance far from int64 overflow.
	maxReserve = math.MaxInt64 / 4
)

// Budget limits retries to a fraction of recent traffic, so that retries
// cannot multiply the load on an upstream that is already failing (the
// Finagle / Linkerd retry budget). Every request deposits; every retry
// withdraws. Deposits and withdrawals expire after ttl, so the budget
// follows the recent request rate, and a reserve of minPerSecond·ttl
// retries per window lets low-traffic routes retry at all.
//
// Exact rule, with D = 1000, W = ⌈1000/ratio⌉ and R = ⌊minPerSecond·ttl·W⌋
// (ttl in seconds): a withdrawal succeeds only if
// R + D·deposits − W·withdrawals ≥ W, counting the deposits and
// withdrawals of the last ttl (ten slots of ttl/10, the current one
// included). Consequently, over any span that touches L slots, with N
// deposits in it and in the ttl before it, successful withdrawals ≤ ratio·N + minPerSecond·ttl·⌈L/10⌉: for a
// span of S seconds about ratio·N + minPerSecond·(S + ttl), and never more
// than ratio·N + minPerSecond·(S + 1.1·ttl). That is at most ratio of the
// requests plus minPerSecond retries a second, after an initial allowance
// of minPerSecond·ttl.
//
// Time is a parameter (Deposit and Withdraw take now), so behaviour is
// deterministic in tests. Times must lie between the years 1678 and 2262
// (time.Time.UnixNano). A Budget is safe for concurrent use. Deposit, called
// on every request, is one atomic add on the common path and never
// allocates; Withdraw, called on retries only, takes a short lock. Under
// concurrency the accounting is approximate by at most the calls racing a
// slot change (once per ttl/10).
//
// A nil *Budget allows every retry: Withdraw returns true and Deposit does
// nothing. The zero Budget allows none. Use NewBudget.
type Budget struct {
	slotNanos int64 // width of one slot; 0 in the zero value
	deposit   int64 // D, or 0 when ratio is 0
	withdraw  int64 // W
	reserve   int64 // R

	mu    sync.Mutex // serializes Withdraw and slot changes
	slots [budgetSlots]budgetSlot
}

type budgetSlot struct {
	epoch atomic.Int64 // which ttl/10 interval since 1970 the value belongs to
	value atomic.Int64 // D per deposit minus W per withdrawal
}

// NewBudget returns a retry budget allowing about ratio retries per request
// plus minPerSecond retries a second, over a sliding window of ttl.
// Defaults (DefaultBudget*): ratio 0.2, minPerSecond 10, ttl 10s. A NaN or
// negative ratio or minPerSecond counts as 0 (ratio 0 leaves only the
// reserve); ratio is capped at 1000; ttl ≤ 0 means 10s. Config validation
// is expected to reject such values before they get here.
func NewBudget(ratio, minPerSecond float64, ttl time.Duration) *Budget {
	if !(ratio > 0) {
		ratio = 0
	}
	ratio = min(ratio, 1000)
	if !(minPerSecond > 0) {
		minPerSecond = 0
	}
	if ttl <= 0 {
		ttl = DefaultBudgetTTL
	}
	b := &Budget{slotNanos: max(int64(ttl)/budgetSlots, 1)}
	if ratio > 0 {
		b.deposit = budgetScale
		b.withdraw = int64(math.Ceil(budgetScale / ratio))
	} else {
		b.withdraw = budgetScale
	}
	window := float64(b.slotNanos*budgetSlots) / float64(time.Second)
	b.reserve = int64(min(math.Floor(minPerSecond*window*float64(b.withdraw)), maxReserve))
	for i := range b.slots {
		b.slots[i].epoch.Store(math.MinInt64)
	}
	return b
}

// Deposit records one request (first attempts, not retries) at now.
func (b *Budget) Deposit(now time.Time) {
	if b == nil || b.deposit == 0 {
		return
	}
	e := b.epoch(now)
	s := &b.slots[slotIndex(e)]
	if s.epoch.Load() != e && !b.turn(s, e) {
		return // now is more than ttl older than time already seen: expired
	}
	s.value.Add(b.deposit)
}

// Withdraw reports whether one retry at now fits in the budget, and if so
// records it.
func (b *Budget) Withdraw(now time.Time) bool {
	if b == nil {
		return true
	}
	if b.slotNanos == 0 {
		return false
	}
	e := b.epoch(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.balanceLocked(e) < b.withdraw {
		return false
	}
	s := &b.slots[slotIndex(e)]
	if !b.turnLocked(s, e) {
		return false
	}
	s.value.Add(-b.withdraw)
	return true
}

// Refund gives back a withdrawal made at now whose retry was not sent
// after all (a hedge the rate limit then refused), so that the budget pays
// only for what reached the upstream. A withdrawal whose slot has already
// turned over (more than ttl/10 ago) has expired and is not given back.
// Refund without a successful Withdraw at the same now would overstate
// the budget.
func (b *Budget) Refund(now time.Time) {
	if b == nil || b.slotNanos == 0 {
		return
	}
	e := b.epoch(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := &b.slots[slotIndex(e)]; s.epoch.Load() == e {
		s.value.Add(b.withdraw)
	}
}

// Available returns how many retries the budget would allow at now if no
// request arrived meanwhile (fractional; ≤ 0 when exhausted). For status
// pages and metrics. A nil Budget reports +Inf.
func (b *Budget) Available(now time.Time) float64 {
	if b == nil {
		return math.Inf(1)
	}
	if b.slotNanos == 0 {
		return 0
	}
	e := b.epoch(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	return float64(b.balanceLocked(e)) / float64(b.withdraw)
}

func (b *Budget) epoch(now time.Time) int64 {
	n := now.UnixNano()
	e := n / b.slotNanos
	if n%b.slotNanos < 0 {
		e-- // floor division before 1970
	}
	return e
}

func slotIndex(e int64) int {
	i := e % budgetSlots
	if i < 0 {
		i += budgetSlots
	}
	return int(i)
}

// turn moves slot s to epoch e, clearing what it held for an older epoch.
// It returns false when s already holds a newer epoch.
func (b *Budget) turn(s *budgetSlot, e int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.turnLocked(s, e)
}

func (b *Budget) turnLocked(s *budgetSlot, e int64) bool {
	cur := s.epoch.Load()
	if cur > e {
		return false
	}
	if cur < e {
		// Clear before publishing the epoch: a concurrent Deposit that sees
		// the new epoch must add to the cleared value, not before it.
		s.value.Store(0)
		s.epoch.Store(e)
	}
	return true
}

// balanceLocked is R plus the values of the slots within ttl of epoch e
// (and of any newer slot a concurrent caller has already started).
func (b *Budget) balanceLocked(e int64) int64 {
	sum := b.reserve
	for i := range b.slots {
		s := &b.slots[i]
		if s.epoch.Load() > e-budgetSlots {
			sum += s.value.Load()
		}
	}
	return sum
}
