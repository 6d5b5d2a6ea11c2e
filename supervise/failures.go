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
}

type failureSlot struct {
	rec   FailureRecord // RequestID unused: the id lives in id[:idLen]
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

// Snapshot returns the kept failures, newest first.
func (r *FailureRing) Snapshot() []Failure {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Failure, 0, r.count)
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
	}
	return out
}
