package proxy

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// shortageLogEvery is how often, at most, noteShortage logs: a shortage
// of descriptors or ports hits every request until it passes, and one
// line per request would bury the rest of the log (and cost a write each,
// when writes are what is short).
const shortageLogEvery = 10 * time.Second

// noteShortage logs, at most once every shortageLogEvery, that ballast
// could not open a connection to t for r for want of a local resource
// (policy.ShortageOf): the line names what ran out and what to do about
// it. The upstream's health is not in question, so no alert is raised.
func (s *Server) noteShortage(r *route, t *target, short policy.Shortage, err error) {
	now := s.clock.Now().UnixNano()
	last := s.shortLogged.Load()
	if (last != 0 && now-last < int64(shortageLogEvery)) || !s.shortLogged.CompareAndSwap(last, now) {
		return // logged lately, or by another request just now
	}
	s.log.Warn("ballast is out of a local resource: calls it cannot send are answered 503 overloaded, and the upstream is not blamed",
		"short_of", short.String(), "route", r.name, "upstream", t.name, "error", err.Error(),
		"hint", shortageHint(short), "repeats_every", shortageLogEvery.String())
}

// shortageText is what ballast says of a shortage that kept it from
// opening a connection to an upstream (err, the dial's error, worded by
// agentErrorText): the agent's 503 detail, and /status's reason.
func shortageText(short policy.Shortage, err error) string {
	return "ballast is out of " + short.String() + " and could not open a connection to the upstream; nothing was sent (" + agentErrorText(err) + ")"
}

// shortageHint is what an operator can do about a shortage.
func shortageHint(short policy.Shortage) string {
	switch short {
	case policy.ShortageDescriptors:
		return "raise ballast's open-file limit (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit), or lower the agents' concurrency"
	case policy.ShortageSystemDescriptors:
		return "the host's open-file table is full (fs.file-max): find what holds the files, or raise the limit"
	case policy.ShortagePorts:
		return "ephemeral ports are spent, usually by connections in TIME_WAIT: widen net.ipv4.ip_local_port_range, or let agents and upstreams keep connections alive"
	case policy.ShortagePool:
		return "every pooled connection to the upstream is busy: the upstream is slow to answer, or the agents' concurrency is above what one upstream pool holds"
	}
	return "the host is short of socket memory"
}

// acceptShort is the rawio.Listener.Short of a listener ballast serves,
// named by which ("agent", "admin"): it logs a shortage of descriptors or
// socket memory that stops ln from accepting (rawio.Listener.Accept waits
// it out, with new connections in the backlog), once when it begins and
// once when it ends.
func (s *Server) acceptShort(which string, ln net.Listener) func(error) {
	addr := ln.Addr().String()
	var since time.Time
	return func(err error) {
		if err != nil {
			since = s.clock.Now()
			short := policy.ShortageDescriptors
			switch {
			case errors.Is(err, syscall.ENFILE):
				short = policy.ShortageSystemDescriptors
			case errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
				short = policy.ShortageMemory
			}
			s.log.Warn("cannot accept connections: ballast is out of a local resource; new connections wait in the listen backlog",
				"listener", which, "address", addr, "short_of", short.String(), "error", err.Error(), "hint", shortageHint(short))
			return
		}
		s.log.Info("accepting connections again", "listener", which, "address", addr,
			"after", s.clock.Now().Sub(since).Round(time.Millisecond).String())
	}
}
