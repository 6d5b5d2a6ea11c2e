package policy

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var budgetStart = time.Date(2024, 5, 14, 10, 0, 0, 0, time.UTC)

// withdrawAll withdraws until the budget refuses and returns how many
// withdrawals succeeded.
func withdrawAll(b *Budget, now time.Time) int {
	n := 0
	for b.Withdraw(now) {
		n++
		if n > 1e6 {
			panic("budget never refuses")
		}
	}
	return n
}

func TestBudgetReserveOnly(t *testing.T) {
	// No traffic: only the reserve, min_per_second·ttl, is available.
	b := NewBudget(DefaultBudgetRatio, DefaultBudgetMinPerSecond, DefaultBudgetTTL)
	if got := withdrawAll(b, budgetStart); got != 100 {
		t.Errorf("withdrawals with no traffic = %d, want 10/s × 10s = 100", got)
	}
	// The withdrawals expire after ttl, and the reserve is whole again.
	if b.Withdraw(budgetStart.Add(DefaultBudgetTTL - time.Nanosecond)) {
		t.Error("withdrawal allowed before the earlier ones expired")
	}
	if got := withdrawAll(b, budgetStart.Add(DefaultBudgetTTL)); got != 100 {
		t.Errorf("withdrawals one ttl later = %d, want 100", got)
	}
}

func TestBudgetRatio(t *testing.T) {
	tests := []struct {
		name     string
		ratio    float64
		deposits int
		want     int
	}{
		{name: "default ratio", ratio: 0.2, deposits: 1000, want: 200},
		{name: "ratio one", ratio: 1, deposits: 37, want: 37},
		{name: "ratio rounds down, never up", ratio: 0.3, deposits: 10, want: 2}, // a retry costs ⌈1000/0.3⌉ = 3334 units; 10 deposits bring 10000
		{name: "ratio zero leaves nothing without a reserve", ratio: 0, deposits: 1000, want: 0},
		{name: "tiny ratio", ratio: 0.001, deposits: 999, want: 0},
		{name: "tiny ratio, enough traffic", ratio: 0.001, deposits: 1000, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudget(tt.ratio, 0, 10*time.Second)
			for range tt.deposits {
				b.Deposit(budgetStart)
			}
			if got := withdrawAll(b, budgetStart); got != tt.want {
				t.Errorf("withdrawals after %d deposits = %d, want %d", tt.deposits, got, tt.want)
			}
		})
	}
}

func TestBudgetDepositsExpire(t *testing.T) {
	ttl := 10 * time.Second
	b := NewBudget(1, 0, ttl)
	b.Deposit(budgetStart)
	if got := b.Available(budgetStart.Add(ttl - time.Nanosecond)); got != 1 {
		t.Errorf("Available just before ttl = %v, want 1", got)
	}
	if b.Withdraw(budgetStart.Add(ttl)) {
		t.Error("withdrawal funded by a deposit one ttl old")
	}
	if got := b.Available(budgetStart.Add(ttl)); got != 0 {
		t.Errorf("Available at ttl = %v, want 0", got)
	}

	// Deposits older than time already seen have expired on arrival.
	b.Deposit(budgetStart.Add(2 * ttl))
	b.Deposit(budgetStart) // stale
	if got := b.Available(budgetStart.Add(2 * ttl)); got != 1 {
		t.Errorf("Available after a stale deposit = %v, want 1", got)
	}

	// Slot granularity is ttl/10: a deposit made late in a slot expires with it.
	b2 := NewBudget(1, 0, ttl)
	b2.Deposit(budgetStart.Add(999 * time.Millisecond))
	if !b2.Withdraw(budgetStart.Add(9999 * time.Millisecond)) {
		t.Error("deposit expired early")
	}
	b2.Deposit(budgetStart.Add(999 * time.Millisecond))
	if b2.Withdraw(budgetStart.Add(ttl)) {
		t.Error("deposit outlived its slot's ttl")
	}
}

func TestBudgetWithdrawalsExpire(t *testing.T) {
	// A withdrawal keeps counting for ttl, even after the deposits that
	// funded it have expired, so a deposit funds only one retry.
	ttl := 10 * time.Second
	b := NewBudget(1, 0, ttl)
	b.Deposit(budgetStart)
	if !b.Withdraw(budgetStart.Add(5 * time.Second)) {
		t.Fatal("withdrawal refused")
	}
	b.Deposit(budgetStart.Add(11 * time.Second))
	if b.Withdraw(budgetStart.Add(11 * time.Second)) {
		t.Error("second withdrawal allowed while the first still counts")
	}
	if !b.Withdraw(budgetStart.Add(15 * time.Second)) {
		t.Error("withdrawal refused after the first expired")
	}
}

// TestBudgetBound checks the bound stated on Budget: with N requests over S
// seconds, all failing and all wanting retries, successful withdrawals
// ≤ ratio·N + minPerSecond·(S + ttl), and they come close to it.
func TestBudgetBound(t *testing.T) {
	tests := []struct {
		name         string
		ratio, min   float64
		ttl          time.Duration
		rps          int
		seconds      int
		retriesEach  int
		wantAtLeast  float64 // fraction of the bound that must be reached
		randomJitter bool
	}{
		{name: "defaults, 100 rps for a minute", ratio: 0.2, min: 10, ttl: 10 * time.Second, rps: 100, seconds: 60, retriesEach: 3, wantAtLeast: 0.8},
		{name: "defaults, 1000 rps", ratio: 0.2, min: 10, ttl: 10 * time.Second, rps: 1000, seconds: 30, retriesEach: 2, wantAtLeast: 0.9},
		{name: "low traffic is carried by the reserve", ratio: 0.2, min: 10, ttl: 10 * time.Second, rps: 2, seconds: 60, retriesEach: 5, wantAtLeast: 0.12},
		{name: "no reserve", ratio: 0.1, min: 0, ttl: 5 * time.Second, rps: 50, seconds: 40, retriesEach: 3, wantAtLeast: 0.9},
		{name: "random arrival times", ratio: 0.2, min: 5, ttl: 3 * time.Second, rps: 200, seconds: 20, retriesEach: 4, wantAtLeast: 0.7, randomJitter: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudget(tt.ratio, tt.min, tt.ttl)
			rng := rand.New(rand.NewPCG(1, 2))
			n := tt.rps * tt.seconds
			step := time.Second / time.Duration(tt.rps)
			withdrawn := 0
			for i := range n {
				now := budgetStart.Add(time.Duration(i) * step)
				if tt.randomJitter {
					now = now.Add(time.Duration(rng.Int64N(int64(step))))
				}
				b.Deposit(now)
				for range tt.retriesEach {
					if !b.Withdraw(now) {
						break
					}
					withdrawn++
				}
			}
			span := float64(tt.seconds) + tt.ttl.Seconds()
			bound := tt.ratio*float64(n) + tt.min*span
			if float64(withdrawn) > bound {
				t.Errorf("withdrawals = %d, above the bound %.1f", withdrawn, bound)
			}
			if float64(withdrawn) < tt.wantAtLeast*bound {
				t.Errorf("withdrawals = %d, want at least %.0f%% of the bound %.1f", withdrawn, 100*tt.wantAtLeast, bound)
			}
			// And never more than the retries asked for.
			if withdrawn > n*tt.retriesEach {
				t.Errorf("withdrawals = %d, more than the %d asked for", withdrawn, n*tt.retriesEach)
			}
		})
	}
}

// TestBudgetBoundRandom checks the exact bound behind the doc comment on
// random traffic: W·withdrawals ≤ D·deposits + ⌈L/10⌉·R, where L is the
// number of ttl/10 slots the run touches; that is, withdrawals ≤
// ratio·deposits + minPerSecond·ttl·⌈L/10⌉.
func TestBudgetBoundRandom(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		ratio := []float64{0.05, 0.2, 0.5, 1, 3}[rng.IntN(5)]
		minPerSecond := float64(rng.IntN(4))
		ttl := time.Duration(1+rng.IntN(20)) * time.Second
		b := NewBudget(ratio, minPerSecond, ttl)
		now := budgetStart
		deposits, withdrawals := 0, 0
		for range 3000 {
			now = now.Add(time.Duration(rng.Int64N(int64(ttl) / 20)))
			if rng.IntN(3) > 0 || rng.IntN(2) == 0 && deposits == 0 {
				b.Deposit(now)
				deposits++
			} else if b.Withdraw(now) {
				withdrawals++
			}
		}
		slot := ttl / budgetSlots
		slots := int64(now.Sub(budgetStart)/slot) + 2
		windows := float64((slots + budgetSlots - 1) / budgetSlots)
		bound := ratio*float64(deposits) + minPerSecond*ttl.Seconds()*windows
		if float64(withdrawals) > bound+1e-9 {
			t.Fatalf("seed %d (ratio %v, min %v, ttl %v): %d withdrawals for %d deposits, bound %.2f",
				seed, ratio, minPerSecond, ttl, withdrawals, deposits, bound)
		}
	}
}

func TestBudgetEdgeValues(t *testing.T) {
	t.Run("nil budget allows every retry", func(t *testing.T) {
		var b *Budget
		b.Deposit(budgetStart)
		if !b.Withdraw(budgetStart) {
			t.Error("nil Budget refused")
		}
		if got := b.Available(budgetStart); !math.IsInf(got, 1) {
			t.Errorf("nil Available = %v, want +Inf", got)
		}
	})
	t.Run("zero budget allows none", func(t *testing.T) {
		var b Budget
		b.Deposit(budgetStart)
		if b.Withdraw(budgetStart) {
			t.Error("zero Budget allowed a retry")
		}
		if got := b.Available(budgetStart); got != 0 {
			t.Errorf("zero Available = %v", got)
		}
	})
	tests := []struct {
		name       string
		ratio, min float64
		ttl        time.Duration
		deposits   int
		want       int
	}{
		{name: "NaN ratio counts as 0", ratio: math.NaN(), min: 1, ttl: time.Second, deposits: 100, want: 1},
		{name: "negative min counts as 0", ratio: 1, min: -5, ttl: time.Second, deposits: 3, want: 3},
		{name: "NaN min counts as 0", ratio: 1, min: math.NaN(), ttl: time.Second, deposits: 3, want: 3},
		{name: "zero ttl means 10s", ratio: 0, min: 1, ttl: 0, deposits: 0, want: 10},
		{name: "huge ratio is capped", ratio: math.Inf(1), min: 0, ttl: time.Second, deposits: 1, want: 1000},
		{name: "huge min does not overflow", ratio: 1e-9, min: 1e300, ttl: time.Hour, deposits: 0, want: -1},
		{name: "tiny ttl", ratio: 1, min: 0, ttl: time.Nanosecond, deposits: 2, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudget(tt.ratio, tt.min, tt.ttl)
			for range tt.deposits {
				b.Deposit(budgetStart)
			}
			if tt.want < 0 {
				for range 1000 {
					if !b.Withdraw(budgetStart) {
						t.Fatal("huge reserve ran out")
					}
				}
				return
			}
			if got := withdrawAll(b, budgetStart); got != tt.want {
				t.Errorf("withdrawals = %d, want %d", got, tt.want)
			}
		})
	}
	t.Run("times before 1970", func(t *testing.T) {
		b := NewBudget(1, 0, 10*time.Second)
		old := time.Date(1969, 12, 31, 23, 59, 55, 0, time.UTC)
		b.Deposit(old)
		if !b.Withdraw(old.Add(9 * time.Second)) {
			t.Error("deposit across the epoch lost")
		}
	})
}

// TestBudgetConcurrent runs deposits and withdrawals from many goroutines
// (run with -race) and checks the accounting still holds the bound.
func TestBudgetConcurrent(t *testing.T) {
	const goroutines, perG = 8, 2000
	b := NewBudget(0.2, 0, 10*time.Second)
	clock := NewFakeClock(budgetStart)
	var wg sync.WaitGroup
	var mu sync.Mutex
	withdrawn := 0
	for range goroutines {
		wg.Go(func() {
			local := 0
			for range perG {
				now := clock.Now()
				b.Deposit(now)
				if b.Withdraw(now) {
					local++
				}
				_ = b.Available(now)
			}
			mu.Lock()
			withdrawn += local
			mu.Unlock()
		})
	}
	// Move time along while they run, within one ttl.
	for range 5 {
		clock.Advance(time.Second)
	}
	wg.Wait()
	if bound := int(0.2 * goroutines * perG); withdrawn > bound {
		t.Errorf("withdrawals = %d, above ratio·N = %d", withdrawn, bound)
	}
	if withdrawn == 0 {
		t.Error("no withdrawal succeeded")
	}
}
