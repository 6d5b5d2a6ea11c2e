package supervise

import (
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// FailureCapacity is how many failures a FailureRing keeps.
const FailureCapacity = 20

// maxRequestID bounds the request id a failure keeps (ballast accepts ids
// of up to 128 bytes).
const maxRequestID = 128

// FailureRecord describes one failed request as the request path knows it.
// Record copies what it keeps: the caller may reuse RequestID's memory.
type FailureRecord struct {
	Time     time.Time
	Route    string
	Upstream string // the last upstream tried; empty when none was
	Status   int    // the status the agent got
	Class    policy.Class
	Cause    policy.Cause
	// Reason is ballast's word for why it gave up (a problem+json reason
	// such as "budget_exhausted"), or empty to use the class.
	Reason    string
	Attempts  int
	RequestID []byte
	// Err is the last attempt's transport error, and Short the local
	// resource ballast ran out of before it could send one; kept as they
	// are and worded only when the ring is read (Snapshot's Describer).
	// Both zero when the agent got the upstream's own answer or ballast
	// refused the request before any attempt.
	Err   error
	Short policy.Shortage
}

// Failure is one entry of /status's failure list.
type Failure struct {
	Time      time.Time `json:"time"`
	Route     string    `json:"route"`
	Upstream  string    `json:"upstream,omitempty"`
	Status    int       `json:"status"`
	Class     string    `json:"class"`
	Cause     string    `json:"cause,omitempty"`
	Reason    string    `json:"reason"`
	Attempts  int       `json:"attempts"`
	RequestID string    `json:"request_id,omitempty"`
	// Detail says why in words when the last attempt failed without an
	// answer (a transport error, ballast's own shortage): the Describer's
	// text, as an upstream's LastFailure.Reason words it. Omitted
	// otherwise.
	Detail string `json:"detail,omitempty"`
}

type failureSlot struct {
	rec   FailureRecord // RequestID unused: the id lives in id[:idLen]; Err kept until the slot is reused
	id    [maxRequestID]byte
	idLen uint8
}

// FailureRing keeps the last FailureCapacity failures. Record is
// allocation-free. The zero value is ready.
type FailureRing struct {
	mu    sync.Mutex
	next  int // the slot the next Record writes
	count int
	slots [FailureCapacity]failureSlot
}

// Record keeps f, dropping the oldest failure when the ring is full.
func (r *FailureRing) Record(f *FailureRecord) {
	r.mu.Lock()
	s := &r.slots[r.next]
	s.rec = *f
	s.rec.RequestID = nil
	s.idLen = uint8(copy(s.id[:], f.RequestID))
	r.next = (r.next + 1) % FailureCapacity
	if r.count < FailureCapacity {
		r.count++
	}
	r.mu.Unlock()
}

// Snapshot returns the kept failures, newest first. describe words the
// Detail of a failure that kept an error or a shortage, after the ring's
// lock is released (Record never waits for it); nil leaves every Detail
// empty.
func (r *FailureRing) Snapshot(describe Describer) []Failure {
	r.mu.Lock()
	out := make([]Failure, 0, r.count)
	var faults []Fault // faults[i] is out[i]'s, when it kept one
	for i := 1; i <= r.count; i++ {
		s := &r.slots[(r.next-i+FailureCapacity)%FailureCapacity]
		f := Failure{
			Time: s.rec.Time, Route: s.rec.Route, Upstream: s.rec.Upstream, Status: s.rec.Status,
			Class: s.rec.Class.String(), Reason: s.rec.Reason, Attempts: s.rec.Attempts,
			RequestID: string(s.id[:s.idLen]),
		}
		if s.rec.Cause != policy.CauseNone {
			f.Cause = s.rec.Cause.String()
		}
		if f.Reason == "" {
			f.Reason = f.Class
		}
		out = append(out, f)
		if describe != nil {
			faults = append(faults, Fault{Time: s.rec.Time, Class: s.rec.Class, Cause: s.rec.Cause, Err: s.rec.Err, Short: s.rec.Short})
		}
	}
	r.mu.Unlock()
	for i := range faults {
		if f := &faults[i]; f.Err != nil || f.Short != policy.ShortageNone {
			out[i].Detail = describe(f)
		}
	}
	return out
}
