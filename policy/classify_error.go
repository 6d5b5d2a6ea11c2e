package policy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
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
// valid) or a server that does not speak TLS at all (a plain-HTTP port
// behind an https:// upstream). Retrying that upstream would only pay the
// backoff and spend the retry budget for the same refusal, turning a
// clear certificate error into budget_exhausted under load; another
// upstream presents its own certificate. So the retry loop gives such an
// upstream no further attempt and moves on to the next fallback at once.
// The failure stays a transient connect-failure for everything else (the
// breaker counts it: the upstream cannot be used). TLS alerts, resets and
// timeouts during the handshake are not deterministic: a loaded server
// may do better on the next connection.
func Deterministic(err error) bool {
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
