package store

import (
	"context"
	"time"
)

// Defaults used when the corresponding argument or option is zero.
const (
	// DefaultTTL is how long a completed record answers duplicates.
	DefaultTTL = 24 * time.Hour
	// DefaultLease is how long a claim may stay in flight before it reads as
	// UnknownOutcome. It must exceed the route's total deadline.
	DefaultLease = 10 * time.Minute
	// DefaultMaxRecords bounds the number of idempotency records.
	DefaultMaxRecords = 10_000
	// DefaultMaxJobs bounds the number of async jobs.
	DefaultMaxJobs = 10_000
	// DefaultJobLease is how long a job lease lasts (see Store.LeaseJob)
	// unless renewed. The proxy renews it every third of that while the
	// job runs.
	DefaultJobLease = 30 * time.Second
	// DefaultMaxResponseBytes bounds len(Header)+len(Body) of a stored
	// response (and of a job's request or response).
	DefaultMaxResponseBytes = 1 << 20
	// MaxKeyBytes bounds the length of a record key or a job id.
	MaxKeyBytes = 4096
)

// Store holds idempotency records and async jobs. All methods are safe for
// concurrent use. After Close every method returns ErrClosed.
//
// The ctx of Claim and Wait bounds them; Complete and Release do not fail on
// a done ctx in the Memory and File backends, so that a request whose
// deadline has passed can still record or drop its claim (a network
// backend uses ctx only to bound the round trip).
type Store interface {
	// Claim tries to take key for a new request.
	//
	// When the key is free (absent or expired, or in UnknownOutcome and
	// args.TakeOverUnknown is set) the caller now owns it: Claim returns the
	// new InFlight record and owned == true. The caller must later pass that
	// record to Complete or Release. With the File backend the claim is on
	// disk (fsynced) before Claim returns.
	//
	// Otherwise Claim returns the existing record and owned == false: InFlight
	// (call Wait), Completed (replay rec.Response) or UnknownOutcome. When the
	// existing record has a different fingerprint, Claim returns it together
	// with an error wrapping ErrMismatch. ErrFull reports that the store holds
	// MaxRecords records and refuses new ones.
	Claim(ctx context.Context, key string, args ClaimArgs) (rec *Record, owned bool, err error)

	// Complete stores resp as the outcome of the claim held (as returned by
	// Claim with owned == true) and wakes every Wait on the key. The record
	// then answers duplicates until now+ttl (DefaultTTL when ttl ≤ 0).
	//
	// A response larger than MaxResponseBytes is not stored: Complete returns
	// an error wrapping ErrTooLarge and leaves the claim held, so the caller
	// passes the response through and then calls Release (or Completes with a
	// smaller response). ErrNotHeld reports that the claim was released,
	// swept or taken over since.
	//
	// With the File backend Complete returns once the completion is queued
	// for the next group commit (unless FileOptions.SyncComplete is set):
	// it is visible at once to Claim, Get and Wait in this process and wakes
	// the waiters once committed. The completion is durable within one group
	// commit after Complete returns; a crash in that window leaves the claim
	// to read as UnknownOutcome when its lease ends, never a duplicate.
	// Validation errors, ErrTooLarge and ErrNotHeld are still returned at
	// once, but a claim lost between that check and the commit (swept, or
	// taken over by a Claim queued just before) is reported only to
	// FileOptions.OnAsyncError; callers therefore treat ErrNotHeld from
	// Complete as a log line, not as a decision (the proxy does).
	Complete(ctx context.Context, held *Record, resp *Response, now time.Time, ttl time.Duration) error

	// Release drops the claim held without storing an outcome and wakes every
	// Wait on the key, so that one of the waiters may claim it. ErrNotHeld
	// reports that the claim is no longer held. With the File backend it is
	// queued like Complete: a crash before its commit leaves the claim to
	// read as UnknownOutcome when its lease ends.
	Release(ctx context.Context, held *Record) error

	// Wait blocks until the key's record is no longer InFlight and returns it
	// (Completed or UnknownOutcome), or returns nil when the claim was
	// released or the record removed (the caller then claims again). A claim
	// whose lease has expired but which its owner never finishes keeps Wait
	// blocked: the caller's ctx bounds it, and Wait returns ctx.Err() wrapped.
	Wait(ctx context.Context, key string) (*Record, error)

	// Get returns the record for key as of now: an InFlight record whose
	// lease has expired reads as UnknownOutcome, an expired record as
	// ErrNotFound.
	Get(ctx context.Context, key string, now time.Time) (*Record, error)

	// PutJob inserts or replaces the job with job.ID. ErrFull reports that a
	// new job would exceed MaxJobs; ErrTooLarge that its request or response
	// exceeds MaxResponseBytes. The job is copied.
	PutJob(ctx context.Context, job *Job) error
	// GetJob returns a copy of the job with id, or ErrNotFound.
	GetJob(ctx context.Context, id string) (*Job, error)
	// ListJobs returns copies of the jobs in any of states (every job when
	// none is given), oldest CreatedAt first. At start-up the caller lists
	// JobQueued and JobRunning, and resumes the pending jobs it can lease
	// (LeaseJob).
	ListJobs(ctx context.Context, states ...JobState) ([]*Job, error)
	// DeleteJob removes the job with id. Deleting a missing job is not an
	// error.
	DeleteJob(ctx context.Context, id string) error
	// LeaseJob takes, or renews, this store instance's lease (see
	// Limits.Owner) on the job with id until now+lease (DefaultJobLease
	// when lease ≤ 0): the instance that holds it runs the job, and no
	// other resumes it. It reports false, taking nothing, when the job is
	// stored and final, or when another instance's lease on it has not run
	// out at now. A job not (yet) stored may be leased, so that the caller
	// may put a new job first and lease it next.
	//
	// The Memory and File backends serve a single process, which owns
	// every job it holds (a pending job found at start-up is its previous
	// run's leftover): they report false only for a final job. With Redis
	// the lease is a key of its own, taken by a compare-and-set script and
	// removed by Redis once its time is up.
	LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error)

	// Sweep removes the records whose ExpiresAt is not after now and the jobs
	// with a non-zero ExpiresAt not after now, wakes the waiters of removed
	// records, and reports how many records and jobs it removed.
	Sweep(now time.Time) (removed int, err error)

	// Close releases the store. Blocked Waits return ErrClosed. With the File
	// backend, Close first commits the completions and releases already
	// queued; records in flight stay on disk and read as UnknownOutcome at
	// the next open.
	Close() error
}

// ClaimArgs are the arguments of Store.Claim besides the key.
type ClaimArgs struct {
	// Fingerprint identifies the request (see Fingerprint). A record with the
	// same key and a different fingerprint is a mismatch.
	Fingerprint [32]byte
	// Now is the time of the request; it becomes the record's StartedAt.
	Now time.Time
	// Lease is how long the claim may stay in flight before it reads as
	// UnknownOutcome (DefaultLease when ≤ 0). Make it longer than the
	// route's total deadline.
	Lease time.Duration
	// TTL is how long the record, once created, keeps answering duplicates
	// if it never completes (an UnknownOutcome record lives this long from
	// Now). DefaultTTL when ≤ 0. Complete sets the TTL of the stored response.
	TTL time.Duration
	// TakeOverUnknown claims a key whose record reads as UnknownOutcome, for
	// routes where repeating the request is safe. The previous holder, if it
	// is still alive, then gets ErrNotHeld from Complete and Release.
	TakeOverUnknown bool
}

func (a ClaimArgs) lease() time.Duration {
	if a.Lease <= 0 {
		return DefaultLease
	}
	return a.Lease
}

func ttlOrDefault(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return DefaultTTL
	}
	return ttl
}
