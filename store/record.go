package store

import "time"

// State is the state of an idempotency record. The zero value is not a valid
// state.
type State uint8

const (
	// InFlight: the owner is running the request; duplicates Wait.
	InFlight State = iota + 1
	// Completed: Response holds the outcome; duplicates replay it.
	Completed
	// UnknownOutcome: the request was started (at StartedAt) but its outcome
	// was lost, because the process died or the lease expired.
	UnknownOutcome
)

// String returns the state's name, as used in logs and the status page.
func (s State) String() string {
	switch s {
	case InFlight:
		return "in_flight"
	case Completed:
		return "completed"
	case UnknownOutcome:
		return "unknown_outcome"
	}
	return "invalid"
}

func (s State) valid() bool { return s >= InFlight && s <= UnknownOutcome }

// Response is a stored upstream response.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Header holds the response headers as "Name: value\r\n" lines.
	Header []byte
	// Body is the response body.
	Body []byte
}

// Size is the number of bytes the response counts against
// MaxResponseBytes: len(Header)+len(Body). A nil Response has size 0.
func (r *Response) Size() int {
	if r == nil {
		return 0
	}
	return len(r.Header) + len(r.Body)
}

func (r *Response) clone() *Response {
	if r == nil {
		return nil
	}
	buf := make([]byte, len(r.Header)+len(r.Body))
	n := copy(buf, r.Header)
	copy(buf[n:], r.Body)
	return &Response{Status: r.Status, Header: buf[:n:n], Body: buf[n:]}
}

// Record is the state of one idempotency key. Records returned by a Store
// are read-only.
type Record struct {
	// Key is the caller-built key (including the tenant hash).
	Key string
	// Fingerprint is the fingerprint of the request that claimed the key.
	Fingerprint [32]byte
	// State is the record's state as of the time it was read.
	State State
	// Owner is the instance id of the store that claimed the key (see
	// Limits.Owner): the process, or for Redis the replica.
	Owner string
	// Token identifies this claim; Complete and Release check it, so a
	// holder whose claim was taken over cannot overwrite the new one.
	Token uint64
	// StartedAt is the time of the request that claimed the key.
	StartedAt time.Time
	// LeaseUntil is when an InFlight record starts to read as UnknownOutcome.
	LeaseUntil time.Time
	// CompletedAt is the time of Complete; zero unless Completed.
	CompletedAt time.Time
	// ExpiresAt is when the record stops answering duplicates and may be
	// swept.
	ExpiresAt time.Time
	// Response is the stored outcome; nil unless Completed.
	Response *Response
}

// expired reports whether the record no longer counts at now.
func (r *Record) expired(now time.Time) bool { return !now.Before(r.ExpiresAt) }

// leaseExpired reports whether r is InFlight with its lease run out at now.
func (r *Record) leaseExpired(now time.Time) bool {
	return r.State == InFlight && !now.Before(r.LeaseUntil)
}

// viewAt returns r as seen at now: an InFlight record past its lease reads
// as UnknownOutcome (a copy; r itself is never changed).
func (r *Record) viewAt(now time.Time) *Record {
	if !r.leaseExpired(now) {
		return r
	}
	c := *r
	c.State = UnknownOutcome
	return &c
}
