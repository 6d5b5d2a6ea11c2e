package policy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/ballast-proxy/ballast/internal/freeport"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// dialErr is a dial error as net.Dialer returns it: the system call's
// error inside a *net.OpError.
func dialErr(call string, errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443},
		Err: os.NewSyscallError(call, errno)}
}

// TestShortageOf pins which errors are ballast's own shortage, and that
// ClassifyError still answers each as a connect-failure (nothing was sent).
func TestShortageOf(t *testing.T) {
	// A real EADDRNOTAVAIL: a dial from an address this host does not have
	// fails in bind, as one fails in connect when the ephemeral ports are
	// spent.
	_, bindErr := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}}).Dial("tcp", "127.0.0.1:1")
	if !errors.Is(bindErr, syscall.EADDRNOTAVAIL) {
		t.Fatalf("dialing from 192.0.2.1: %v, want EADDRNOTAVAIL", bindErr)
	}
	// A real refusal, which is the upstream's.
	addr, err := freeport.Loopback() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	_, refusedErr := net.Dial("tcp", addr)

	// Go's resolver keeps only the text of its socket's error.
	dnsShort := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "dial udp [::1]:53: socket: too many open files",
		Name: "api.example.com", Server: "[::1]:53", IsTemporary: true}}
	dnsNotFound := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host",
		Name: "api.example.com", Server: "[::1]:53", IsNotFound: true}}

	tests := []struct {
		name  string
		err   error
		want  Shortage
		class Class
		cause Cause
	}{
		{"socket EMFILE", dialErr("socket", syscall.EMFILE), ShortageDescriptors, Transient, CauseConnect},
		{"socket ENFILE", dialErr("socket", syscall.ENFILE), ShortageSystemDescriptors, Transient, CauseConnect},
		{"socket ENOBUFS", dialErr("socket", syscall.ENOBUFS), ShortageMemory, Transient, CauseConnect},
		{"socket ENOMEM", dialErr("socket", syscall.ENOMEM), ShortageMemory, Transient, CauseConnect},
		{"connect EADDRNOTAVAIL", dialErr("connect", syscall.EADDRNOTAVAIL), ShortagePorts, Transient, CauseConnect},
		{"real bind EADDRNOTAVAIL", bindErr, ShortagePorts, Transient, CauseConnect},
		{"DNS lookup out of descriptors", dnsShort, ShortageDescriptors, Transient, CauseConnect},
		{"pool full", fasthttp.ErrNoFreeConns, ShortagePool, Transient, CauseConnect},
		{"pool full, wrapped", fmt.Errorf("upstream: %w", fasthttp.ErrNoFreeConns), ShortagePool, Transient, CauseConnect},
		{"real refusal", refusedErr, ShortageNone, Transient, CauseConnect},
		{"connect ECONNREFUSED", dialErr("connect", syscall.ECONNREFUSED), ShortageNone, Transient, CauseConnect},
		{"connect ENETUNREACH", dialErr("connect", syscall.ENETUNREACH), ShortageNone, Transient, CauseConnect},
		{"DNS no such host", dnsNotFound, ShortageNone, Transient, CauseConnect},
		{"dial timeout", fasthttp.ErrDialTimeout, ShortageNone, Timeout, CauseConnect},
		// Only a dial's shortage is known to come before anything was
		// sent: the same errno on a write may follow a sent request.
		{"write ENOBUFS", &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ENOBUFS)}, ShortageNone, Transient, CauseReset},
		{"bare EMFILE", syscall.EMFILE, ShortageNone, Transient, CauseReset},
		{"pipe closed", fasthttputil.ErrInmemoryListenerClosed, ShortageNone, Transient, CauseReset},
		{"nil", nil, ShortageNone, OK, CauseNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ShortageOf(tt.err); got != tt.want {
				t.Errorf("ShortageOf(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if class, cause := ClassifyError(tt.err); class != tt.class || cause != tt.cause {
				t.Errorf("ClassifyError(%v) = %v, %v; want %v, %v", tt.err, class, cause, tt.class, tt.cause)
			}
		})
	}
}
