package supervise

import (
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Fault is why an attempt or a request failed, as the request path has it
// at hand: a class and cause, the upstream's status, the error value, the
// local resource ballast ran out of. It is kept as it is and worded only
// when /status is read (a Describer does that), so keeping one costs a
// copy and never formats a string on the request path.
type Fault struct {
	// Time is when the failure happened (the server's clock).
	Time  time.Time
	Class policy.Class
	Cause policy.Cause
	// Status is the upstream's answer; 0 when it sent none.
	Status int
	// Err is the transport error, or the validation failure, that failed
	// the attempt; nil when the upstream answered and its status says
	// why. Its text may hold network addresses and bytes the peer sent:
	// a Describer never shows it as it is. Keeping it keeps the error
	// value alive until the next failure replaces it.
	Err error
	// Short is the local resource ballast ran out of before it could send
	// anything (policy.ShortageOf); policy.ShortageNone when it did not.
	Short policy.Shortage
}

// A Describer words a Fault for /status and the status page: a short text
// an operator can act on, which names no network address and quotes no
// header value, key or body. It returns "" when it has nothing to add to
// the class and status.
type Describer func(f *Fault) string

// LastFailure is an upstream's most recent failure on /status, worded.
type LastFailure struct {
	// Time is when it happened.
	Time time.Time `json:"time"`
	// Class and Cause are its failure class and cause (docs/retries.md).
	Class string `json:"class"`
	Cause string `json:"cause,omitempty"`
	// Status is the upstream's answer; omitted when it sent none.
	Status int `json:"status,omitempty"`
	// Reason says why in words: "dial tcp4: connect: connection
	// refused", "tls: failed to verify certificate: x509: certificate
	// signed by unknown authority", "the upstream answered 503 Service
	// Unavailable". It names no address and quotes no header value, key
	// or body.
	Reason string `json:"reason"`
	// ShortOf names the local resource ballast itself ran out of (the
	// upstream is not to blame), and Hint what an operator can do about
	// it; both omitted otherwise.
	ShortOf string `json:"short_of,omitempty"`
	Hint    string `json:"hint,omitempty"`
}

// NoteFault keeps f as the upstream's last failure, replacing the one
// before. Call it only for failures: a success leaves the last failure as
// it was. Allocation-free; f.Err is kept, not formatted.
func (u *Upstream) NoteFault(f *Fault) {
	u.faultMu.Lock()
	u.fault, u.faulted = *f, true
	u.faultMu.Unlock()
}

// LastFault returns the failure NoteFault kept last, and false before
// any.
func (u *Upstream) LastFault() (Fault, bool) {
	u.faultMu.Lock()
	defer u.faultMu.Unlock()
	return u.fault, u.faulted
}
