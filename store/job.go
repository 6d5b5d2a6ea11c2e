package store

import (
	"slices"
	"strings"
	"time"
)

// JobState is the state of an async job. The zero value is not valid.
type JobState uint8

const (
	// JobQueued: accepted, waiting for its first or next attempt.
	JobQueued JobState = iota + 1
	// JobRunning: an attempt is in progress.
	JobRunning
	// JobSucceeded: finished; Response holds the final response.
	JobSucceeded
	// JobFailed: finished without success; LastError says why and Response
	// may hold the last response.
	JobFailed
)

// String returns the state's name as shown by GET /_ballast/jobs/{id}.
func (s JobState) String() string {
	switch s {
	case JobQueued:
		return "queued"
	case JobRunning:
		return "running"
	case JobSucceeded:
		return "succeeded"
	case JobFailed:
		return "failed"
	}
	return "invalid"
}

func (s JobState) valid() bool { return s >= JobQueued && s <= JobFailed }

// Pending reports whether the job still has work to do (queued or running).
func (s JobState) Pending() bool { return s == JobQueued || s == JobRunning }

// Request is the original request of a job, kept so that a pending job on an
// idempotent route can be resumed after a restart.
type Request struct {
	// Method is the HTTP method.
	Method string
	// URI is the request URI as received: path and query.
	URI string
	// Header holds the request headers as "Name: value\r\n" lines.
	Header []byte
	// Body is the request body.
	Body []byte
}

func (r Request) size() int { return len(r.Method) + len(r.URI) + len(r.Header) + len(r.Body) }

// jobRefLen is how many leading characters of a job's id JobRef keeps.
const jobRefLen = 8

// JobRef is how the job with id is named to the operator — in logs,
// errors, alerts and /status — as opposed to the agent that started it:
// the first 8 hex digits of its id. The whole id is the capability to
// read the job's result (for an agent without identity headers, all that
// guards it), so it goes only to that agent; the prefix tells jobs apart,
// and the 96 bits it leaves out stay unguessable. An id no longer than
// that (never one ballast makes) is kept whole.
func JobRef(id string) string {
	if len(id) <= jobRefLen {
		return id
	}
	return id[:jobRefLen]
}

// Job is an async job (Prefer: respond-async).
type Job struct {
	// ID is the job id, unique in the store, 1 to MaxKeyBytes bytes.
	ID string
	// Tenant is the hash of the caller's identity; the proxy answers
	// GET /_ballast/jobs/{id} only to the same tenant.
	Tenant string
	// Route is the name of the route the job runs on.
	Route string
	// State is the job's state.
	State JobState
	// Attempts counts the attempts made so far.
	Attempts int
	// LastError describes the last failed attempt; empty if none.
	LastError string
	// NextRetryAt is when the next attempt is due; zero when none is.
	NextRetryAt time.Time
	// CreatedAt and UpdatedAt are set by the caller.
	CreatedAt, UpdatedAt time.Time
	// ExpiresAt is when Sweep may remove the job; zero keeps it until
	// DeleteJob.
	ExpiresAt time.Time
	// Request is the original request.
	Request Request
	// Response is the final response; nil until the job finishes.
	Response *Response
}

// Expired reports whether the job's time is up at now: a non-zero ExpiresAt
// not after now. An expired job reads as gone before Sweep removes it.
func (j *Job) Expired(now time.Time) bool {
	return !j.ExpiresAt.IsZero() && !now.Before(j.ExpiresAt)
}

// clone copies j and its byte slices, so the store never aliases the
// caller's buffers.
func (j *Job) clone() *Job {
	c := *j
	c.Request.Header = append([]byte(nil), j.Request.Header...)
	c.Request.Body = append([]byte(nil), j.Request.Body...)
	c.Response = j.Response.clone()
	return &c
}

func matchState(s JobState, states []JobState) bool {
	if len(states) == 0 {
		return true
	}
	for _, x := range states {
		if s == x {
			return true
		}
	}
	return false
}

// sortJobs orders jobs by CreatedAt, then ID.
func sortJobs(jobs []*Job) {
	slices.SortFunc(jobs, func(a, b *Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
