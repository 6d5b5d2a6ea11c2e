package rawio

import "net"

// Listener wraps the connections a TCP listener accepts (see Wrap). It
// is for a listener of HTTP/1 agents: its connections also follow each
// request head as it is read, and end a read that waits for more of a
// head that a bare LF already ended with ErrBareLFHead.
type Listener struct {
	net.Listener
	// Stop, when not nil, is how the server stops its connections
	// without losing requests (see Stop).
	Stop *Stop
}

// Accept waits for the next connection and returns it wrapped.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := Wrap(c)
	if rc, ok := w.(*Conn); ok {
		rc.heads = true
		rc.head.start()
		rc.stop = l.Stop
	}
	return w, nil
}
