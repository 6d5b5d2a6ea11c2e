package policy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/valyala/fasthttp"
)

// ClassifyError classifies a transport error returned by a fasthttp
// HostClient (or anything wrapping one with %w). A nil error is (OK,
// CauseNone).
//
// The cause is what retry safety depends on, so ClassifyError only answers
// CauseConnect when the request certainly never left ballast:
//
//	error                                                  class      cause
//	context.Canceled                                       canceled   none
//	fasthttp.ErrDialTimeout, ErrTLSHandshakeTimeout,
//	  a timeout inside a dial or DNS lookup                timeout    connect-failure
//	ErrTLSHandshake wrapping a timeout                     timeout    connect-failure
//	*fasthttp.ErrDialWithUpstream, *net.OpError{Op:"dial"},
//	  *net.DNSError, ECONNREFUSED, fasthttp.ErrNoFreeConns,
//	  TLS alerts (Op "remote error"), TLS handshake and
//	  certificate errors, anything wrapping ErrTLSHandshake transient  connect-failure
//	context.DeadlineExceeded, fasthttp.ErrTimeout,
//	  os.ErrDeadlineExceeded, any net.Error timeout        timeout    timeout
//	fasthttp.ErrBodyTooLarge, ErrSmallReadBuffer           invalid    invalid
//	ECONNRESET, EPIPE, ECONNABORTED, io.EOF,
//	  io.ErrUnexpectedEOF, fasthttp.ErrConnectionClosed,
//	  net.ErrClosed, anything else                         transient  reset
//
// fasthttp.ErrConnectionClosed and io.EOF mean the server closed the
// connection before the first response byte, which is after the request
// was written: the upstream may have processed it, so they are resets, not
// connect failures. A bare fasthttp.ErrTimeout may also come from waiting
// for a pooled connection, but it cannot be told apart from a read timeout,
// so it is treated as possibly sent.
//
// Among the connect failures, ShortageOf picks out those that say
// ballast itself is out of a resource (descriptors, ports, its own
// connection pool), which the retry loop does not lay at the upstream's
// door.
func ClassifyError(err error) (Class, Cause) {
	switch {
	case err == nil:
		return OK, CauseNone
	case errors.Is(err, context.Canceled):
		return Canceled, CauseNone
	case neverSent(err):
		if isTimeout(err) || errors.Is(err, fasthttp.ErrDialTimeout) || errors.Is(err, fasthttp.ErrTLSHandshakeTimeout) {
			return Timeout, CauseConnect
		}
		return Transient, CauseConnect
	case isTimeout(err):
		return Timeout, CauseTimeout
	case errors.Is(err, fasthttp.ErrBodyTooLarge), errors.Is(err, fasthttp.ErrSmallReadBuffer):
		return Invalid, CauseInvalid
	default:
		// Resets, EOFs and anything unknown: the request may have been
		// processed, so only safe methods may repeat it.
		return Transient, CauseReset
	}
}

// ErrTLSHandshake is wrapped, beside its cause, by the error of a TLS
// handshake with an upstream that did not complete. The handshake comes
// before any byte of the request, so whatever ended it (a timeout, a
// reset or EOF, an alert, a certificate ballast refused) the request was
// never sent: ClassifyError answers CauseConnect, and a timeout is a
// connect timeout, not a per-try one that may have reached the upstream.
var ErrTLSHandshake = errors.New("policy: TLS handshake failed")

// Deterministic reports whether err is a failure that every attempt at
// the same upstream meets again until someone changes the upstream or the
// route's ca_file: a certificate ballast cannot verify (signed by an
// unknown authority, issued for another host name, expired or not yet
// valid), a server that does not speak TLS at all (a plain-HTTP port
// behind an https:// upstream), or a handshake refused over the TLS
// parameters two configurations share (a TLSAlertError carrying
// protocol_version or insufficient_security; see below). Retrying that
// upstream would only pay the backoff and spend the retry budget for the
// same refusal, turning a clear error into budget_exhausted under load;
// another upstream presents its own certificate and speaks its own TLS.
// So the retry loop gives such an upstream no further attempt and moves
// on to the next fallback at once. The failure stays a transient
// connect-failure for everything else (the breaker counts it: the
// upstream cannot be used).
//
// Of the TLS alerts only two are deterministic, whichever side sent
// them. protocol_version (70): the two sides share no TLS version (an
// upstream that speaks only TLS 1.0 or 1.1; ballast requires 1.2); no
// load or timing changes the versions a server is configured for.
// insufficient_security (71): RFC 5246 §7.2.2 reserves it for a
// negotiation that failed "specifically because the server requires
// ciphers more secure than those supported by the client", a property of
// the two configurations alone. handshake_failure (40) is not, although
// a server that accepts none of ballast's cipher suites or curves sends
// it: it is the catch-all alert, which TLS stacks and load balancers
// also send for failures of the moment (a key or signing service that
// did not answer, no healthy backend for the name, a certificate being
// rotated), so one does not prove the next handshake meets it. Like
// every other alert, a reset or a timeout during the handshake, it is
// retried: a loaded server may do better on the next connection.
func Deterministic(err error) bool {
	if a, ok := errors.AsType[*TLSAlertError](err); ok {
		return a.Alert == AlertProtocolVersion || a.Alert == AlertInsufficientSecurity
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return true
	}
	return false
}

// The TLS alerts (RFC 8446 §6) Deterministic and TLSAlertError name.
const (
	AlertHandshakeFailure     uint8 = 40
	AlertProtocolVersion      uint8 = 70
	AlertInsufficientSecurity uint8 = 71
)

// TLSAlertError is the fatal TLS alert that ended a handshake with an
// upstream: sent by the upstream (Remote), or by ballast's TLS client,
// refusing what the upstream chose (a TLS 1.0 or 1.1 server answers a
// ClientHello with its own version, which ballast refuses with
// protocol_version). crypto/tls reports an alert it received as an
// error of an unexported type, and one it sent not at all (only a
// message), so the dial reads the alert off the handshake's records and
// wraps a TLSAlertError beside crypto/tls's own error. Only alerts sent
// in the clear are seen: the ones that refuse the parameters of the
// handshake, before any key exists, which are the ones Deterministic
// looks at.
type TLSAlertError struct {
	Alert  uint8 // the alert's description (AlertProtocolVersion, ...)
	Remote bool  // the upstream sent it; false: ballast did
}

func (e *TLSAlertError) Error() string {
	by := "ballast"
	if e.Remote {
		by = "the upstream"
	}
	switch e.Alert {
	case AlertProtocolVersion:
		return "TLS alert protocol_version from " + by + ": the upstream and ballast share no TLS version (ballast requires TLS 1.2 or later)"
	case AlertInsufficientSecurity:
		return "TLS alert insufficient_security from " + by + ": the upstream requires cipher suites ballast does not offer"
	case AlertHandshakeFailure:
		return "TLS alert handshake_failure from " + by
	}
	return "TLS alert " + strconv.Itoa(int(e.Alert)) + " from " + by
}

// neverSent reports whether err certainly happened before the request
// reached the upstream application.
func neverSent(err error) bool {
	if errors.Is(err, ErrTLSHandshake) {
		return true
	}
	if _, ok := errors.AsType[*fasthttp.ErrDialWithUpstream](err); ok {
		return true
	}
	if op, ok := errors.AsType[*net.OpError](err); ok && (op.Op == "dial" || op.Op == "remote error") {
		// "remote error" is a TLS alert from the peer: the session was
		// refused, so the upstream application never saw the request.
		return true
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return true
	}
	switch {
	case errors.Is(err, fasthttp.ErrDialTimeout),
		errors.Is(err, fasthttp.ErrTLSHandshakeTimeout),
		errors.Is(err, fasthttp.ErrNoFreeConns),
		errors.Is(err, syscall.ECONNREFUSED):
		return true
	}
	return tlsHandshakeError(err)
}

// tlsHandshakeError reports a TLS failure: the handshake precedes every
// byte of the request, and an alert or certificate error means the upstream
// application never saw it.
func tlsHandshakeError(err error) bool {
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return true
	}
	return Deterministic(err)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, fasthttp.ErrTLSHandshakeTimeout) {
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	return false
}
