package supervise

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Board holds the supervision state of every route by name: windows that
// survive reloads which keep a route's name, plus the shared failure ring.
// Lookups are lock-free once a route exists. The zero value is not usable;
// call NewBoard.
type Board struct {
	mu     sync.Mutex
	routes atomic.Pointer[map[string]*Route] // copy-on-write
	// inForce is the last Retain's keep, under mu: once set, Route keeps
	// no state for a name it does not list.
	inForce  map[string][]string
	failures FailureRing
}

// NewBoard returns an empty board.
func NewBoard() *Board {
	b := &Board{}
	m := map[string]*Route{}
	b.routes.Store(&m)
	return b
}

// Route returns the route's state, creating it on first use. It allocates
// only then. A name the last Retain did not keep (a request still running
// on a route a reload removed) gets a state of its own that the board does
// not keep: its recording there is garbage, and never brings the route
// back.
func (b *Board) Route(name string) *Route {
	if r, ok := (*b.routes.Load())[name]; ok {
		return r
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.routes.Load()
	if r, ok := old[name]; ok {
		return r
	}
	if _, ok := b.inForce[name]; b.inForce != nil && !ok {
		return newRoute(name)
	}
	m := make(map[string]*Route, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	r := newRoute(name)
	m[name] = r
	b.routes.Store(&m)
	return r
}

func newRoute(name string) *Route {
	r := &Route{name: name}
	empty := []*Upstream{}
	r.ups.Store(&empty)
	return r
}

// Retain forgets the routes not in keep (route name → the names of its
// upstreams), and each kept route's upstreams not listed: what a reload
// removed. A route or upstream kept keeps its windows. Requests still
// running on an older config may record into forgotten ones, which are
// then garbage; from now on Route keeps state only for the names in keep,
// so those requests never bring a removed route back. keep must not
// change afterwards.
func (b *Board) Retain(keep map[string][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inForce = keep
	old := *b.routes.Load()
	m := make(map[string]*Route, len(keep))
	for name, r := range old {
		ups, ok := keep[name]
		if !ok {
			continue
		}
		m[name] = r
		r.retainUpstreams(ups)
	}
	b.routes.Store(&m)
}

func (r *Route) retainUpstreams(names []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.ups.Load()
	kept := make([]*Upstream, 0, len(old))
	for _, u := range old {
		for _, n := range names {
			if u.name == n {
				kept = append(kept, u)
				break
			}
		}
	}
	r.ups.Store(&kept)
}

// Len is how many routes the board keeps state for.
func (b *Board) Len() int { return len(*b.routes.Load()) }

// Failures is the board's ring of recent failures.
func (b *Board) Failures() *FailureRing { return &b.failures }

// Route is one route's supervision state: its window of requests as the
// agent saw them, and its upstreams'.
type Route struct {
	name string
	// Window records one Sample per answered request.
	Window
	mu  sync.Mutex
	ups atomic.Pointer[[]*Upstream] // copy-on-write
}

// Name is the route's name.
func (r *Route) Name() string { return r.name }

// Upstream returns the state of the route's upstream with that name
// (host:port), creating it on first use. It allocates only then.
func (r *Route) Upstream(name string) *Upstream {
	for _, u := range *r.ups.Load() {
		if u.name == name {
			return u
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.ups.Load()
	for _, u := range old {
		if u.name == name {
			return u
		}
	}
	u := &Upstream{name: name}
	ups := append(append(make([]*Upstream, 0, len(old)+1), old...), u)
	r.ups.Store(&ups)
	return u
}

// Upstream is one upstream of a route: a window of attempts, in-flight
// attempts, its last failure, and what alerts have already been raised
// about it.
type Upstream struct {
	name string
	// Window records one Sample per attempt.
	Window
	inflight    atomic.Int64
	breaker     atomic.Int32 // last seen policy.BreakerState
	coolAlerted atomic.Int64 // unix nanoseconds of the cool-down end last alerted

	faultMu sync.Mutex
	fault   Fault // the last failure NoteFault kept, when faulted
	faulted bool
}

// Name is the upstream's host[:port].
func (u *Upstream) Name() string { return u.name }

// Begin counts an attempt in flight; End ends it.
func (u *Upstream) Begin() { u.inflight.Add(1) }

// End ends an attempt counted by Begin.
func (u *Upstream) End() { u.inflight.Add(-1) }

// InFlight is how many attempts are running now.
func (u *Upstream) InFlight() int64 { return u.inflight.Load() }

// NoteBreaker remembers the breaker's state and reports whether it has
// just opened (it was not open when last noted). Concurrent callers see
// one opening once.
func (u *Upstream) NoteBreaker(s policy.BreakerState) (opened bool) {
	prev := policy.BreakerState(u.breaker.Load())
	if prev == s {
		return false
	}
	if !u.breaker.CompareAndSwap(int32(prev), int32(s)) {
		return false // another caller noted the change
	}
	return s == policy.StateOpen
}

// NoteCooldown reports whether a cool-down ending at until is new: not
// the one last reported. Callers alert on new ones only, so a long pause
// read by many requests raises one alert.
func (u *Upstream) NoteCooldown(until time.Time) bool {
	n := until.UnixNano()
	for {
		prev := u.coolAlerted.Load()
		if prev >= n {
			return false
		}
		if u.coolAlerted.CompareAndSwap(prev, n) {
			return true
		}
	}
}
