package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
	"github.com/valyala/fasthttp"
)

// bufferLimit is the largest Content-Length read whole into the response
// before relaying; larger bodies, chunked bodies and event streams are
// relayed as they arrive.
const bufferLimit = 64 << 10

// pooledConn is what ballast needs of fasthttp's pooled connection type.
type pooledConn interface {
	Conn() net.Conn
	LastUseTime() time.Time
	CreatedTime() time.Time
}

// transport performs one HTTP exchange on a fasthttp.HostClient's
// connection pool. It replaces HostClient.Do for two reasons: streamed
// bodies there cost four allocations per response (closures), and ballast
// must bound the gaps between body reads (timeouts.idle), which needs the
// connection. Small fixed-size bodies are read whole; everything else is
// exposed as a pooled upstreamBody.
//
// C is fasthttp's unexported connection type, inferred from
// HostClient.AcquireConn.
type transport[C pooledConn] struct {
	hc        *fasthttp.HostClient
	acquire   func(time.Duration, bool) (C, error)
	release   func(C)
	closeConn func(C)
	bodies    sync.Pool
}

// exchanger is the transport seen without its type parameter.
type exchanger interface {
	// do writes req and reads resp's headers (and small bodies) before
	// deadline. On success, a streamed body is resp.BodyStream(), an
	// *upstreamBody that must be closed. cancel, when not nil, can call
	// the exchange off while it waits (a hedge's loser); it then fails
	// with errTryCanceled. resent says req went out twice: whole on a
	// pooled connection that closed unanswered, then on a fresh one — the
	// upstream may have seen both.
	do(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, cancel *tryCancel) (resent bool, err error)
}

func newTransport[C pooledConn](hc *fasthttp.HostClient, acquire func(time.Duration, bool) (C, error), release, closeConn func(C)) *transport[C] {
	return &transport[C]{hc: hc, acquire: acquire, release: release, closeConn: closeConn}
}

// errPoolWait is the pool's wait for a free connection (every one
// HostClient.MaxConns allows is busy) cut short by the attempt's time
// left, before HostClient.MaxConnWaitTimeout. fasthttp answers it with a
// bare ErrTimeout, which reads as a timeout after the request was sent, at
// the upstream's door: it is ballast's own pool that is full, and nothing
// was sent (policy.ShortageOf).
var errPoolWait = fmt.Errorf("%w within the attempt's time left", fasthttp.ErrNoFreeConns)

// errStaleConn marks an exchange that failed on a reused keep-alive
// connection before any response byte arrived: the upstream had most
// likely closed it while idle.
var errStaleConn = errors.New("proxy: reused upstream connection closed before answering")

func (t *transport[C]) do(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, cancel *tryCancel) (resent bool, err error) {
	err = t.once(req, resp, deadline, cancel)
	if err != nil && cancel != nil && cancel.isCanceled() {
		return false, errTryCanceled
	}
	// Like net/http: a reused connection that the upstream had closed is
	// retried once on a fresh one when nothing can have been processed
	// twice — the request was never fully written, or the method is
	// idempotent.
	se, stale := err.(*staleError) // a type switch, not errors.As: no allocation
	if stale && (!se.written || idempotentMethod(req.Header.Method())) {
		resent = se.written
		err = t.once(req, resp, deadline, cancel)
		if err != nil && cancel != nil && cancel.isCanceled() {
			return resent, errTryCanceled
		}
		se, stale = err.(*staleError)
	}
	if stale {
		err = se.err
	}
	return resent, err
}

type staleError struct {
	err     error
	written bool
}

func (e *staleError) Error() string { return errStaleConn.Error() + ": " + e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

func (t *transport[C]) once(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, cancel *tryCancel) error {
	timeout := time.Until(deadline)
	if timeout <= 0 {
		return fasthttp.ErrTimeout
	}
	cc, reused, err := t.acquireLive(timeout)
	if err != nil {
		return err
	}
	conn := cc.Conn()
	if err := conn.SetDeadline(deadline); err != nil {
		t.closeConn(cc)
		return err
	}
	// Attached after the deadline is set, so that the deadline cannot
	// undo a cancel.
	if cancel != nil && !cancel.attach(conn) {
		t.discard(cc)
		return errTryCanceled
	}
	bw := t.hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	t.hc.ReleaseWriter(bw)
	if err != nil {
		if !isTimeout(err) && isConnClosed(err) {
			// Like net/http's Transport: the upstream may have answered
			// before reading the whole request (a 413 to an oversized
			// upload) and closed the connection, which is what broke the
			// write. Its answer is then waiting to be read.
			br := t.hc.AcquireReader(conn)
			if readHeader(&resp.Header, br) == nil {
				return t.readResponseBody(req, resp, cc, br, cancel, true)
			}
			t.hc.ReleaseReader(br)
		}
		t.drop(cc, cancel)
		if reused && !isTimeout(err) {
			return &staleError{err: err}
		}
		return timeoutOr(err)
	}

	br := t.hc.AcquireReader(conn)
	if err := readHeader(&resp.Header, br); err != nil {
		t.hc.ReleaseReader(br)
		t.drop(cc, cancel)
		if reused && isConnClosed(err) {
			return &staleError{err: err, written: true}
		}
		return timeoutOr(err)
	}
	return t.readResponseBody(req, resp, cc, br, cancel, resp.ConnectionClose() || req.ConnectionClose())
}

// acquireLive takes a connection from the pool, or dials one. It skips
// (and closes) idle connections whose peer has closed them meanwhile (an
// upstream keep-alive timeout shorter than ballast's, an upstream
// restart): nothing has been sent on those, so skipping them loses and
// repeats nothing, whatever the method. Each skipped connection leaves the
// pool, so the loop ends, at the latest on a fresh dial. reused says the
// connection has carried an exchange before.
func (t *transport[C]) acquireLive(timeout time.Duration) (cc C, reused bool, err error) {
	for {
		cc, err = t.acquire(timeout, false)
		if err == fasthttp.ErrTimeout {
			err = errPoolWait
		}
		if err != nil {
			return cc, false, err
		}
		reused = !cc.LastUseTime().IsZero() // zero until the pool first takes it back
		if !reused || !peerGone(cc.Conn()) {
			return cc, reused, nil
		}
		t.closeConn(cc)
	}
}

// peerGone reports whether an idle connection can no longer carry a
// request (rawio.Conn.PeerGone), looking through TLS (and the
// alertWatch under an upstream's TLS client) to the TCP connection. A
// connection it cannot look into is taken as usable; a failed exchange
// on it takes the stale path of do.
func peerGone(c net.Conn) bool {
	for {
		tc, ok := c.(interface{ NetConn() net.Conn }) // *tls.Conn, *alertWatch
		if !ok {
			break
		}
		c = tc.NetConn()
	}
	rc, ok := c.(*rawio.Conn)
	return ok && rc.PeerGone()
}

// agentGone reports whether the agent has closed the connection its
// request came on (rawio.Conn.PeerHungUp), looking through TLS. A request
// with no such connection (an async job's) has no agent to lose. Bytes
// the agent sent after its request (a pipelined request) keep it present.
func agentGone(ctx *fasthttp.RequestCtx) bool {
	rc := agentConn(ctx)
	return rc != nil && rc.PeerHungUp()
}

// agentDone is agentGone for a standing stream: there, anything the agent
// sends also ends it (rawio.Conn.PeerGone). Its pipelined request could
// not be answered before the stream ends anyway, and bytes queued ahead
// of a FIN would otherwise hide the FIN, and pin the stream forever.
func agentDone(ctx *fasthttp.RequestCtx) bool {
	rc := agentConn(ctx)
	return rc != nil && rc.PeerGone()
}

// agentSocket is the connection a request came on, TLS or not, or nil for
// an async job's request, whose ctx.Conn() is fasthttp's placeholder (its
// deadline methods would panic).
func agentSocket(ctx *fasthttp.RequestCtx) net.Conn {
	switch c := ctx.Conn().(type) {
	case *rawio.Conn, *tls.Conn:
		return c
	}
	return nil
}

// agentConn is the raw connection a request came on, looking through TLS,
// or nil (an async job's request has none).
func agentConn(ctx *fasthttp.RequestCtx) *rawio.Conn {
	c := ctx.Conn()
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		c = tc.NetConn()
	}
	rc, _ := c.(*rawio.Conn)
	return rc
}

// statusAgentGone is the status logged for a request whose agent left
// before its answer: nginx's 499 Client Closed Request.
const statusAgentGone = 499

// readResponseBody reads or exposes the body of the response whose header
// br has just read from cc, and disposes of cc: back to the pool once the
// body is read, unless closeAfter; a streamed body (see upstreamBody) takes
// cc and br over. On error cc is closed.
func (t *transport[C]) readResponseBody(req *fasthttp.Request, resp *fasthttp.Response, cc C, br *bufio.Reader, cancel *tryCancel, closeAfter bool) error {
	status := resp.StatusCode()
	cl := resp.Header.ContentLength()
	switch {
	case req.Header.IsHead() || status == 204 || status == 304 || (status >= 100 && status < 200):
		resp.SkipBody = true
		cl = 0
	case cl >= 0 && cl <= bufferLimit && !isEventStream(resp.Header.ContentType()):
		if err := resp.ReadBody(br, 0); err != nil {
			t.hc.ReleaseReader(br)
			t.drop(cc, cancel)
			return timeoutOr(err)
		}
		cl = 0
		resp.SkipBody = false
	default:
		if cancel != nil && cancel.detach() {
			t.hc.ReleaseReader(br)
			t.discard(cc)
			return errTryCanceled
		}
		b := t.acquireBody()
		b.cc, b.br, b.closeAfter = cc, br, closeAfter
		b.start(cl)
		if cl < 0 {
			cl = -1 // relayed chunked, whatever the upstream's framing
		}
		resp.SetBodyStream(b, cl)
		return nil
	}
	t.hc.ReleaseReader(br)
	if cancel != nil && cancel.detach() {
		// Called off once the answer was in: it is whole, but the
		// connection's deadline may be in the past.
		t.discard(cc)
		return nil
	}
	if closeAfter {
		t.closeConn(cc)
	} else {
		_ = cc.Conn().SetDeadline(time.Time{})
		t.release(cc)
	}
	return nil
}

// drop closes cc after a failed exchange, detaching cancel first.
func (t *transport[C]) drop(cc C, cancel *tryCancel) {
	if cancel != nil {
		cancel.detach()
	}
	t.discard(cc)
}

// discard closes cc after a failed or abandoned exchange. A TLS
// connection's socket is closed first, so that closing the TLS
// connection sends no close_notify: crypto/tls waits up to five seconds
// for room in the socket to write it, and an upstream that stopped
// reading (mid-upload, at the per-try deadline or a hedge's win) leaves
// none, which held the attempt's end, and the agent's answer, up by as
// much. A session broken off needs no notify: the upstream reads the TCP
// close as its end, as it would without TLS. Connections closed after a
// whole answer (Connection: close) still end with close_notify.
func (t *transport[C]) discard(cc C) {
	if tc, ok := cc.Conn().(*tls.Conn); ok {
		_ = tc.NetConn().Close()
	}
	t.closeConn(cc)
}

// Answers no HTTP/1.1 upstream may give ballast; each fails the attempt
// and closes its connection.
var (
	// errUnaskedUpgrade: ballast strips Upgrade from every request, so a
	// 101 switches to a protocol nobody asked for (RFC 9110 §15.2.2), and
	// the connection must not go back to the pool.
	errUnaskedUpgrade = errors.New("proxy: the upstream switched protocols (101) although nothing asked it to")
	// errBadStatus: a status outside 100 to 599 (RFC 9110 §15) has no
	// meaning and no known framing.
	errBadStatus = errors.New("proxy: the upstream's status code is outside 100 to 599")
	// errBadHeaderName: a header name with a space (RFC 9110 §5.1), which
	// fasthttp lets through; the agent's parser may read it otherwise.
	errBadHeaderName = errors.New("proxy: the upstream sent a header name that is not a token")
)

// readHeader reads the final response header, skipping interim 1xx
// responses (100, 103), and refuses answers no upstream may give. Its
// errors never quote the answer's bytes (see unquotedHeaderError).
func readHeader(h *fasthttp.ResponseHeader, br *bufio.Reader) error {
	for range 8 {
		if err := h.Read(br); err != nil {
			if strings.IndexByte(err.Error(), '"') >= 0 {
				return &unquotedHeaderError{err: err}
			}
			return err
		}
		switch s := h.StatusCode(); {
		case s == fasthttp.StatusSwitchingProtocols:
			return errUnaskedUpgrade
		case s < 100 || s > 599:
			return errBadStatus
		case s >= 200:
			// An answer without Content-Type has none: fasthttp would
			// make up text/plain, which validate.content_type and the
			// event-stream checks would then read.
			h.SetNoDefaultContentType(true)
			for k := range h.All() {
				if bytes.IndexByte(k, ' ') >= 0 {
					return errBadHeaderName
				}
			}
			return nil
		}
	}
	return errors.New("proxy: too many interim responses")
}

// unquotedHeaderError is an error of fasthttp's response header parser
// whose message stops before the bytes fasthttp quotes (the status line,
// or up to 400 bytes of the header block): fasthttp leaves them out only
// inside HostClient.Do, which the transport does not use. Those bytes are
// whatever the upstream sent — an upstream that echoes its input, or a
// port speaking another protocol, sends back the request ballast wrote,
// the credentials the route set included — and the message reaches the
// agent's problem detail and the log. Unwrap keeps fasthttp's error for
// classification.
type unquotedHeaderError struct{ err error }

func (e *unquotedHeaderError) Error() string {
	msg := e.err.Error()
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimSuffix(strings.TrimRight(msg[:i], " :"), ", contents")
	}
	return msg + " (the upstream's bytes are not shown)"
}

func (e *unquotedHeaderError) Unwrap() error { return e.err }

func isEventStream(ct []byte) bool {
	return len(ct) >= len("text/event-stream") && asciiEqualFold(ct[:len("text/event-stream")], []byte("text/event-stream"))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, fasthttp.ErrTimeout) || (errors.As(err, &ne) && ne.Timeout())
}

func timeoutOr(err error) error {
	if isTimeout(err) {
		return fasthttp.ErrTimeout
	}
	return err
}

func isConnClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, fasthttp.ErrConnectionClosed)
}

func (t *transport[C]) acquireBody() *upstreamBody[C] {
	if b, ok := t.bodies.Get().(*upstreamBody[C]); ok {
		return b
	}
	return &upstreamBody[C]{t: t}
}

// bodyMode is how an upstream body is framed.
type bodyMode uint8

const (
	bodyFixed      bodyMode = iota // Content-Length
	bodyChunked                    // Transfer-Encoding: chunked
	bodyUntilClose                 // neither: the body ends when the connection does
)

// upstreamBody reads one streamed upstream response body straight off its
// pooled connection, bounding each read by the idle timeout and the
// request's total deadline. Closing it returns the connection to the pool
// when the body was read to its end, and drops it otherwise.
type upstreamBody[C pooledConn] struct {
	t          *transport[C]
	cc         C
	br         *bufio.Reader
	closeAfter bool

	mode      bodyMode
	remaining int64 // bodyFixed: bytes left; bodyChunked: bytes left in this chunk
	done      bool
	err       error

	idle     time.Duration
	deadline time.Time
	wanted   func() bool // a patient stream's reader is still there
	// cancel, when set (watch), calls the rest of the body off: the
	// agent it is relayed to has hung up.
	cancel *tryCancel
}

var _ fasthttp.ReadCloserWithError = (*upstreamBody[pooledConn])(nil)

func (b *upstreamBody[C]) start(cl int) {
	b.done, b.err, b.idle, b.deadline = false, nil, 0, time.Time{}
	switch {
	case cl >= 0:
		b.mode, b.remaining = bodyFixed, int64(cl)
		b.done = cl == 0
	case cl == -1:
		b.mode, b.remaining = bodyChunked, 0
	default:
		b.mode = bodyUntilClose
	}
}

// bound sets the limits for reading the rest of the body: no gap between
// reads longer than idle (0: no limit), and nothing after deadline.
func (b *upstreamBody[C]) bound(idle time.Duration, deadline time.Time) {
	b.idle, b.deadline, b.wanted = idle, deadline, nil
	if idle <= 0 {
		_ = b.cc.Conn().SetReadDeadline(deadline)
	}
}

// patient makes the body a standing stream, where silence is normal (an
// MCP server's GET event stream, which speaks only when it has news): no
// deadline, and a gap longer than every ends it only when wanted says the
// reader is gone; otherwise the read goes on waiting.
func (b *upstreamBody[C]) patient(every time.Duration, wanted func() bool) {
	b.idle, b.deadline, b.wanted = every, time.Time{}, wanted
}

// watch lets c call the rest of the body off: c.cancel then cuts a read
// waiting on the upstream short, and the reads after it fail too.
func (b *upstreamBody[C]) watch(c *tryCancel) {
	if c.attach(b.cc.Conn()) {
		b.cancel = c
	} else {
		b.err = errTryCanceled
	}
}

func (b *upstreamBody[C]) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.done {
		return 0, io.EOF
	}
	if b.cancel != nil && b.cancel.isCanceled() {
		// Called off between two reads: the deadline set below would
		// undo the one cancel set.
		b.err = errTryCanceled
		return 0, b.err
	}
	for {
		if b.idle > 0 {
			d := time.Now().Add(b.idle)
			if !b.deadline.IsZero() && b.deadline.Before(d) {
				d = b.deadline
			}
			_ = b.cc.Conn().SetReadDeadline(d)
		}
		n, err := b.read(p)
		if err != nil && err != io.EOF {
			if n == 0 && b.wanted != nil && isTimeout(err) && (b.cancel == nil || !b.cancel.isCanceled()) && b.wanted() {
				continue // quiet, and still listened to
			}
			b.err = timeoutOr(err)
			return n, b.err
		}
		return n, err
	}
}

func (b *upstreamBody[C]) read(p []byte) (int, error) {
	switch b.mode {
	case bodyFixed:
		if int64(len(p)) > b.remaining {
			p = p[:b.remaining]
		}
		n, err := b.br.Read(p)
		b.remaining -= int64(n)
		if b.remaining == 0 {
			b.done = true
			return n, nil
		}
		if err == io.EOF {
			return n, io.ErrUnexpectedEOF
		}
		return n, err
	case bodyChunked:
		if b.remaining == 0 {
			size, err := readChunkSize(b.br)
			if err != nil {
				return 0, err
			}
			if size == 0 {
				if err := skipTrailer(b.br); err != nil {
					return 0, err
				}
				b.done = true
				return 0, io.EOF
			}
			b.remaining = size
		}
		if int64(len(p)) > b.remaining {
			p = p[:b.remaining]
		}
		n, err := b.br.Read(p)
		b.remaining -= int64(n)
		if b.remaining == 0 && err == nil {
			err = expectCRLF(b.br)
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	default:
		n, err := b.br.Read(p)
		if err == io.EOF {
			b.done = true
		}
		return n, err
	}
}

// CloseWithError (fasthttp calls it exactly once, through
// Response.CloseBodyStream or Reset) releases the connection: back to the pool when the body
// was read to its end on a keep-alive connection, closed otherwise.
func (b *upstreamBody[C]) CloseWithError(error) error {
	t := b.t
	if b.cancel != nil {
		b.cancel.detach() // the connection is no longer the body's to call off
		b.cancel = nil
	}
	t.hc.ReleaseReader(b.br)
	switch {
	case b.done && b.err == nil && !b.closeAfter && b.mode != bodyUntilClose:
		_ = b.cc.Conn().SetDeadline(time.Time{})
		t.release(b.cc)
	case b.done && b.err == nil:
		t.closeConn(b.cc) // read whole; the connection ends with the answer
	default:
		t.discard(b.cc) // broken off, or left unread
	}
	var zero C
	b.cc, b.br = zero, nil
	t.bodies.Put(b)
	return nil
}

const maxChunkSize = 1 << 40

// readChunkSize reads a chunk-size line, ignoring chunk extensions.
func readChunkSize(br *bufio.Reader) (int64, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || len(line) > 16 {
		return 0, errBadChunk
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, errBadChunk
		}
		n = n<<4 | int64(d)
	}
	if n < 0 || n > maxChunkSize {
		return 0, errBadChunk
	}
	return n, nil
}

var errBadChunk = errors.New("proxy: malformed chunked encoding from the upstream")

func expectCRLF(br *bufio.Reader) error {
	c, err := br.ReadByte()
	if err == nil && c == '\r' {
		c, err = br.ReadByte()
	}
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if c != '\n' {
		return errBadChunk
	}
	return nil
}

// skipTrailer reads trailer fields up to the empty line ending the body.
// ballast does not relay trailers.
func skipTrailer(br *bufio.Reader) error {
	for range 64 {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
	return errBadChunk
}

// idempotentMethod reports RFC 9110's idempotent methods.
func idempotentMethod(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
