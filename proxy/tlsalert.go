package proxy

import (
	"net"

	"github.com/ballast-proxy/ballast/policy"
)

// alertWatch is the connection under an upstream's TLS client. While the
// handshake runs it follows the TLS records going each way and keeps the
// first fatal alert sent in the clear: the alerts that refuse a
// handshake's parameters (version, cipher suites) come before any key
// exists. crypto/tls reports the alert it received only as an unexported
// type, and the one it sent (refusing a TLS 1.1 ServerHello, say) not at
// all, so this is where policy.TLSAlertError comes from. Once the
// handshake is over (done), reads and writes pass straight through.
//
// Only the goroutine running the handshake uses the watch while it runs;
// done is set by that goroutine before the connection is handed on.
type alertWatch struct {
	net.Conn
	done    bool
	in, out recordScan
	alert   *policy.TLSAlertError // the first fatal alert seen; nil: none
}

// NetConn returns the connection watched, as tls.Conn.NetConn does, so
// that whoever looks through the TLS connection for the TCP one
// (peerGone) finds it.
func (w *alertWatch) NetConn() net.Conn { return w.Conn }

func (w *alertWatch) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if !w.done {
		w.scan(&w.in, p[:n], true)
	}
	return n, err
}

func (w *alertWatch) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	if !w.done {
		w.scan(&w.out, p[:n], false)
	}
	return n, err
}

func (w *alertWatch) scan(s *recordScan, p []byte, remote bool) {
	if code, ok := s.feed(p); ok && w.alert == nil {
		w.alert = &policy.TLSAlertError{Alert: code, Remote: remote}
	}
}

// recordScan follows one direction of a TLS record stream (RFC 8446
// §5.1: a 5-byte header of type, version and length, then the body),
// fed as the bytes come, in pieces of any size.
type recordScan struct {
	hdr  [5]byte
	nh   int     // header bytes held
	left int     // body bytes of the current record still to come
	body [2]byte // the body of a record that may be a plaintext alert
	nb   int
}

const (
	recordTypeAlert = 21
	alertLevelFatal = 2
)

// feed takes the next bytes of the stream and reports the description
// of a fatal alert in the clear whose record ends within them. An alert
// record in the clear has a 2-byte body (level, description); an
// encrypted one is longer (TLS 1.2) or is not of type alert (TLS 1.3).
func (s *recordScan) feed(p []byte) (code uint8, fatal bool) {
	for len(p) > 0 {
		if s.nh < len(s.hdr) {
			k := copy(s.hdr[s.nh:], p)
			s.nh += k
			p = p[k:]
			if s.nh == len(s.hdr) {
				s.left, s.nb = int(s.hdr[3])<<8|int(s.hdr[4]), 0
				if s.left == 0 {
					s.nh = 0
				}
			}
			continue
		}
		k := min(len(p), s.left)
		alert := s.hdr[0] == recordTypeAlert && s.hdr[3] == 0 && s.hdr[4] == 2
		if alert {
			s.nb += copy(s.body[s.nb:], p[:k])
		}
		s.left -= k
		p = p[k:]
		if s.left == 0 {
			s.nh = 0
			if alert && s.body[0] == alertLevelFatal && !fatal {
				code, fatal = s.body[1], true
			}
		}
	}
	return code, fatal
}
