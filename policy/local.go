package policy

import (
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/valyala/fasthttp"
)

// Shortage is a local resource ballast ran out of when it tried to open a
// connection to an upstream (see ShortageOf). The zero value is
// ShortageNone.
type Shortage uint8

const (
	// ShortageNone: the error is not a local shortage.
	ShortageNone Shortage = iota
	// ShortageDescriptors: the process's open-file limit (EMFILE).
	ShortageDescriptors
	// ShortageSystemDescriptors: the system's open-file table (ENFILE).
	ShortageSystemDescriptors
	// ShortageMemory: socket buffer or kernel memory (ENOBUFS, ENOMEM).
	ShortageMemory
	// ShortagePorts: local ports to connect from (EADDRNOTAVAIL: the
	// ephemeral port range is spent, typically by connections in
	// TIME_WAIT).
	ShortagePorts
	// ShortagePool: every connection ballast's pool allows to the upstream
	// (HostClient.MaxConns) was busy, and none came free within
	// MaxConnWaitTimeout (fasthttp.ErrNoFreeConns).
	ShortagePool
)

// String says what ran out, in words that follow "ballast is out of".
func (s Shortage) String() string {
	switch s {
	case ShortageDescriptors:
		return "file descriptors (its open-file limit)"
	case ShortageSystemDescriptors:
		return "file descriptors (the system's open-file table)"
	case ShortageMemory:
		return "socket memory"
	case ShortagePorts:
		return "local ports to connect from (the ephemeral port range)"
	case ShortagePool:
		return "connections to the upstream (its pool's limit)"
	}
	return "nothing"
}

// shortageErrnos are the errors of a socket or connect call that say the
// machine ballast runs on, not the peer, is out of something.
var shortageErrnos = [...]struct {
	errno    syscall.Errno
	shortage Shortage
}{
	{syscall.EMFILE, ShortageDescriptors},
	{syscall.ENFILE, ShortageSystemDescriptors},
	{syscall.ENOBUFS, ShortageMemory},
	{syscall.ENOMEM, ShortageMemory},
	{syscall.EADDRNOTAVAIL, ShortagePorts},
}

// ShortageOf reports what local resource err says ballast ran out of
// before it could send anything, or ShortageNone:
//
//   - a dial whose socket or connect call failed for want of descriptors,
//     memory or ports (a sidecar beside a busy agent reaching its
//     open-file limit), or whose DNS lookup did: Go's resolver keeps only
//     the text of its own socket's error, so a *net.DNSError is read by
//     that text;
//   - fasthttp.ErrNoFreeConns: ballast's own pool to the upstream is full.
//
// ClassifyError answers such an error as a transient connect-failure,
// which is true as far as it goes: nothing was sent. But it says nothing
// of the upstream's health, and another try a moment later meets the same
// shortage, so the retry loop asks ShortageOf first: such an attempt
// counts in neither the upstream's breaker, its retry budget nor its
// /status window, it is not retried on that upstream, and the agent hears
// that ballast is overloaded, not that the upstream is unavailable. Every
// other dial error (refused, unreachable, a DNS answer) is the upstream's,
// or the network's.
func ShortageOf(err error) Shortage {
	if err == nil {
		return ShortageNone
	}
	if errors.Is(err, fasthttp.ErrNoFreeConns) {
		return ShortagePool
	}
	op, ok := errors.AsType[*net.OpError](err)
	if !ok || op.Op != "dial" {
		return ShortageNone
	}
	for _, e := range shortageErrnos {
		if errors.Is(op.Err, e.errno) {
			return e.shortage
		}
	}
	if de, ok := errors.AsType[*net.DNSError](op.Err); ok {
		for _, e := range shortageErrnos {
			if strings.HasSuffix(de.Err, ": "+e.errno.Error()) {
				return e.shortage
			}
		}
	}
	return ShortageNone
}
