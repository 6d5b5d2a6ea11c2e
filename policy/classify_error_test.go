package policy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestClassifyError(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantClass Class
		wantCause Cause
	}{
		{name: "nil", err: nil, wantClass: OK, wantCause: CauseNone},

		{name: "context canceled", err: context.Canceled, wantClass: Canceled, wantCause: CauseNone},
		{name: "wrapped canceled", err: fmt.Errorf("proxy: attempt: %w", context.Canceled), wantClass: Canceled, wantCause: CauseNone},
		{name: "canceled wins over eof", err: errors.Join(io.EOF, context.Canceled), wantClass: Canceled, wantCause: CauseNone},

		{name: "fasthttp dial timeout", err: fasthttp.ErrDialTimeout, wantClass: Timeout, wantCause: CauseConnect},
		{name: "tls handshake timeout", err: fasthttp.ErrTLSHandshakeTimeout, wantClass: Timeout, wantCause: CauseConnect},
		{name: "dial op timing out", err: &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, wantClass: Timeout, wantCause: CauseConnect},
		{name: "dial refused", err: &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}, wantClass: Transient, wantCause: CauseConnect},
		{name: "bare ECONNREFUSED", err: syscall.ECONNREFUSED, wantClass: Transient, wantCause: CauseConnect},
		{name: "dial unreachable", err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.EHOSTUNREACH}, wantClass: Transient, wantCause: CauseConnect},
		{name: "dns not found", err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "api.invalid", IsNotFound: true}}, wantClass: Transient, wantCause: CauseConnect},
		{name: "bare dns error", err: &net.DNSError{Err: "server misbehaving", Name: "api.example", IsTemporary: true}, wantClass: Transient, wantCause: CauseConnect},
		{name: "dns timeout", err: &net.DNSError{Err: "i/o timeout", Name: "api.example", IsTimeout: true}, wantClass: Timeout, wantCause: CauseConnect},
		{name: "no free conns", err: fasthttp.ErrNoFreeConns, wantClass: Transient, wantCause: CauseConnect},
		{name: "tls record header (plain http server)", err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, wantClass: Transient, wantCause: CauseConnect},
		{name: "tls alert received", err: &net.OpError{Op: "remote error", Err: errors.New("tls: handshake failure")}, wantClass: Transient, wantCause: CauseConnect},
		{name: "tls alert error", err: fmt.Errorf("handshake: %w", tls.AlertError(40)), wantClass: Transient, wantCause: CauseConnect},
		{name: "certificate verification", err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, wantClass: Transient, wantCause: CauseConnect},
		{name: "hostname mismatch", err: x509.HostnameError{Host: "api.example"}, wantClass: Transient, wantCause: CauseConnect},
		{name: "expired certificate", err: x509.CertificateInvalidError{Reason: x509.Expired}, wantClass: Transient, wantCause: CauseConnect},

		{name: "fasthttp timeout", err: fasthttp.ErrTimeout, wantClass: Timeout, wantCause: CauseTimeout},
		{name: "context deadline", err: context.DeadlineExceeded, wantClass: Timeout, wantCause: CauseTimeout},
		{name: "read deadline", err: &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, wantClass: Timeout, wantCause: CauseTimeout},

		{name: "body too large", err: fasthttp.ErrBodyTooLarge, wantClass: Invalid, wantCause: CauseInvalid},
		{name: "headers too large", err: fmt.Errorf("error when reading response headers: %w", fasthttp.ErrSmallReadBuffer), wantClass: Invalid, wantCause: CauseInvalid},

		{name: "connection closed before first byte", err: fasthttp.ErrConnectionClosed, wantClass: Transient, wantCause: CauseReset},
		{name: "eof", err: io.EOF, wantClass: Transient, wantCause: CauseReset},
		{name: "unexpected eof", err: io.ErrUnexpectedEOF, wantClass: Transient, wantCause: CauseReset},
		{name: "read reset", err: &net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}, wantClass: Transient, wantCause: CauseReset},
		{name: "write broken pipe", err: &net.OpError{Op: "write", Net: "tcp", Err: &os.SyscallError{Syscall: "write", Err: syscall.EPIPE}}, wantClass: Transient, wantCause: CauseReset},
		{name: "conn aborted", err: syscall.ECONNABORTED, wantClass: Transient, wantCause: CauseReset},
		{name: "use of closed conn", err: net.ErrClosed, wantClass: Transient, wantCause: CauseReset},
		{name: "unknown error is a possibly-sent reset", err: errors.New("boom"), wantClass: Transient, wantCause: CauseReset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cls, cause := ClassifyError(tt.err)
			if cls != tt.wantClass || cause != tt.wantCause {
				t.Errorf("ClassifyError(%v) = (%v, %v), want (%v, %v)", tt.err, cls, cause, tt.wantClass, tt.wantCause)
			}
		})
	}
}

// TestClassifyErrorLoopback pins the classification to the errors a real
// fasthttp.HostClient returns against misbehaving loopback servers.
func TestClassifyErrorLoopback(t *testing.T) {
	tests := []struct {
		name      string
		serve     func(net.Conn) // nil: nothing listens on the port
		tls       bool
		wantClass Class
		wantCause Cause
	}{
		{
			name:      "nothing listening: refused before sending",
			wantClass: Transient, wantCause: CauseConnect,
		},
		{
			name: "closed after reading the request: reset, maybe processed",
			serve: func(c net.Conn) {
				readRequest(c)
				c.Close()
			},
			wantClass: Transient, wantCause: CauseReset,
		},
		{
			name: "reset after reading the request",
			serve: func(c net.Conn) {
				readRequest(c)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			},
			wantClass: Transient, wantCause: CauseReset,
		},
		{
			name: "no answer within the timeout",
			serve: func(c net.Conn) {
				readRequest(c)
				// Never answer; return once the client gives up and closes.
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
				c.Close()
			},
			wantClass: Timeout, wantCause: CauseTimeout,
		},
		{
			name: "tls client against a plain http server: handshake fails before sending",
			serve: func(c net.Conn) {
				buf := make([]byte, 512)
				c.Read(buf)
				io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				c.Close()
			},
			tls:       true,
			wantClass: Transient, wantCause: CauseConnect,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			done := make(chan struct{})
			if tt.serve == nil {
				ln.Close()
				close(done)
			} else {
				go func() {
					defer close(done)
					c, err := ln.Accept()
					if err != nil {
						return
					}
					tt.serve(c)
				}()
				defer ln.Close()
			}
			hc := &fasthttp.HostClient{
				Addr:                      addr,
				IsTLS:                     tt.tls,
				TLSConfig:                 &tls.Config{InsecureSkipVerify: true},
				MaxIdemponentCallAttempts: 1,
				WriteTimeout:              time.Second,
				// The pool's cleaner goroutine exits after one idle period
				// with no connections; keep it short so goleak sees it go.
				MaxIdleConnDuration: 10 * time.Millisecond,
				// fasthttp's dialer, without the DNS cache whose cleaner
				// goroutine lives for a minute.
				Dial:    (&fasthttp.TCPDialer{DisableDNSResolution: true}).Dial,
				RetryIf: func(*fasthttp.Request) bool { return false },
			}
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			scheme := "http"
			if tt.tls {
				scheme = "https"
			}
			req.SetRequestURI(scheme + "://" + addr + "/v1/chat/completions")
			req.Header.SetMethod("POST")
			req.SetBodyString(`{"model":"x"}`)
			err = hc.DoTimeout(req, resp, 200*time.Millisecond)
			if err == nil {
				t.Fatal("request succeeded; want a transport error")
			}
			cls, cause := ClassifyError(err)
			if cls != tt.wantClass || cause != tt.wantCause {
				t.Errorf("ClassifyError(%v) = (%v, %v), want (%v, %v)", err, cls, cause, tt.wantClass, tt.wantCause)
			}
			ln.Close()
			<-done
		})
	}
}

func readRequest(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var req fasthttp.Request
	_ = req.Read(bufio.NewReader(c))
}
