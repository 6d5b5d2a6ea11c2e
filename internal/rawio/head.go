package rawio

import (
	"bytes"
	"errors"
)

// ErrBareLFHead is the error a Listener's connection returns from Read
// when the request head it is reading ended at a blank line other than
// CRLF CRLF (a bare LF: "Host: x\n\n", "Host: x\r\n\n") and the reader
// asks for more. An HTTP/1 parser that ends a head only at CRLF CRLF, as
// fasthttp's does, would otherwise wait for bytes the agent never sends,
// until its read timeout: RFC 9112 §2.2 lets a server refuse such a
// message with 400, and the reader can now do so at once.
var ErrBareLFHead = errors.New("rawio: the request head ends in a bare LF (a blank line other than CRLF CRLF)")

// headWatch follows the bytes of one request head as they are read: from
// the first read after the connection opened or after a response was
// written, until CRLF CRLF ends the head. It never alters or holds back a
// byte; it only notices a head that a bare LF ended.
//
// A read that holds a whole head and more goes on with the next head in
// the same bytes when they start with a request line and the head before
// declares no body (no Content-Length, Transfer-Encoding or Upgrade): a
// pipelined request, which the reader has buffered and will parse once it
// has answered the one before. Watching it then is what notices a
// pipelined head a bare LF ended; start keeps that watch (pipelined).
//
// It stops watching, unsure, when the first bytes read are not a request
// line ("GET /x HTTP/1.1"): pipelined bytes that came in a read of their
// own after the reader had stopped reading, a request body after a 100
// Continue, or TLS records; and after a head that began in an earlier
// read, whose body it cannot tell. The cost on a normal request is one
// search of its head for CRLF CRLF.
type headWatch struct {
	on        bool    // watching a head
	first     bool    // no byte of the head read yet
	bare      bool    // a blank line other than CRLF CRLF ended the head
	pipelined bool    // the head watched began in the read that ended the one before
	tail      [3]byte // the last bytes read, for patterns across reads
}

var crlfcrlf = []byte("\r\n\r\n")

// start watches the next bytes read as a new request head, unless the
// head being watched is a pipelined one already partly read: the reader
// asks for more of that one first.
func (h *headWatch) start() {
	if h.pipelined && h.on {
		h.pipelined = false
		return
	}
	*h = headWatch{on: true, first: true}
}

// saw follows p, the bytes just read.
func (h *headWatch) saw(p []byte) {
	whole := h.first // p holds the head from its first byte
	if h.first {
		if len(bytes.TrimLeft(p, "\r\n")) == 0 {
			// Only the empty lines a request line may follow (RFC 9112
			// §2.2; some clients send a CRLF after a body), which the
			// parser skips: nothing of a request read yet.
			return
		}
		h.first = false
		if !startsRequestLine(p) {
			h.on = false
			return
		}
		// The empty lines before the request line, which the parser
		// skips, are no blank line ending the head: "\n\nGET ..." is not
		// a bare LF head.
		p = bytes.TrimLeft(p, "\r\n")
	}
	if i := bytes.Index(p, crlfcrlf); i >= 0 {
		// A complete head: the parser needs nothing more of it.
		next := p[i+len(crlfcrlf):]
		if !whole || len(next) == 0 || !startsRequestLine(next) || declaresBody(p[:i]) {
			h.on = false
			return
		}
		*h = headWatch{on: true, first: true, pipelined: true}
		h.saw(next)
		return
	}
	prev := h.tail
	for _, c := range p {
		if c == '\n' && (prev[2] == '\n' || prev[2] == '\r' && prev[1] == '\n' && prev[0] != '\r') {
			h.bare = true
		}
		if c == '\n' && prev[2] == '\r' && prev[1] == '\n' && prev[0] == '\r' {
			h.on = false // CRLF CRLF across two reads
			return
		}
		prev = [3]byte{prev[1], prev[2], c}
	}
	h.tail = prev
}

// declaresBody reports whether head (a request head without its blank
// line) has a Content-Length, Transfer-Encoding or Upgrade field: the
// bytes after it may be a body, or another protocol, not a next head.
// Content-Length: 0 counts too; a watch it stops only leaves a pipelined
// head unwatched, as before.
func declaresBody(head []byte) bool {
	for len(head) > 0 {
		var line []byte
		line, head, _ = bytes.Cut(head, []byte("\n"))
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		if bytes.EqualFold(name, []byte("Content-Length")) || bytes.EqualFold(name, []byte("Transfer-Encoding")) ||
			bytes.EqualFold(name, []byte("Upgrade")) {
			return true
		}
	}
	return false
}

// stalled reports whether a reader asking for more is waiting for the end
// of a head a bare LF already ended.
func (h *headWatch) stalled() bool { return h.on && h.bare }

// interim reports whether p, written to an agent, is an interim (1xx)
// response: "100 Continue" asks for the body, which is read next, not a
// new head. The Write of one does not count as a response written (Read
// neither yields nor starts watching a head after it).
func interim(p []byte) bool {
	return len(p) > 10 && string(p[:10]) == "HTTP/1.1 1"
}

// startsRequestLine reports whether p begins (after the empty lines RFC
// 9112 §2.2 lets a server skip) with a whole line that looks like a
// request line: an upper-case method, a space, and " HTTP/" in it.
func startsRequestLine(p []byte) bool {
	for len(p) > 0 && (p[0] == '\r' || p[0] == '\n') {
		p = p[1:]
	}
	i := 0
	for i < len(p) && 'A' <= p[i] && p[i] <= 'Z' {
		i++
	}
	if i == 0 || i >= len(p) || p[i] != ' ' {
		return false
	}
	end := bytes.IndexByte(p, '\n')
	return end > 0 && bytes.Contains(p[i:end], []byte(" HTTP/"))
}
