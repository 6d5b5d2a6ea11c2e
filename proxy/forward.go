package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

const (
	headerTimeout          = "X-Ballast-Timeout"
	ballastPrefix          = "X-Ballast-"
	headerAttempts         = "X-Ballast-Attempts"
	headerUpstream         = "X-Ballast-Upstream"
	headerRequestIDBallast = "X-Ballast-Request-Id"
)

// inboundSkip are request headers never copied upstream: hop-by-hop headers
// (RFC 9110 §7.6.1), headers the server consumed, and headers ballast sets
// itself.
var inboundSkip = [][]byte{
	[]byte("Connection"), []byte("Keep-Alive"), []byte("Proxy-Connection"), []byte("TE"),
	[]byte("Trailer"), []byte("Transfer-Encoding"), []byte("Upgrade"), []byte("Proxy-Authorization"),
	[]byte("Host"), []byte("Content-Length"), []byte("Expect"),
	[]byte("X-Forwarded-For"), []byte("X-Forwarded-Proto"), []byte(headerRequestID),
}

// outboundSkip are response headers never copied back to the agent.
var outboundSkip = [][]byte{
	[]byte("Connection"), []byte("Keep-Alive"), []byte("Proxy-Connection"), []byte("TE"),
	[]byte("Trailer"), []byte("Upgrade"), []byte("Proxy-Authenticate"),
}

// forward sends the request to the route's upstream and relays the answer.
// The inbound request is only read; the outbound one is built.
func (s *Server) forward(ctx *fasthttp.RequestCtx, r *route, start time.Time) {
	deadline := start.Add(r.total)
	// Each line is a bound the agent (or a library on its way) asked for:
	// all of them hold, so the lowest applies, and any invalid one is 400.
	for _, v := range ctx.Request.Header.PeekAll(headerTimeout) {
		d, err := parseTimeoutHeader(v)
		if err != nil {
			writeProblem(ctx, problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest,
				Detail: headerTimeout + ": " + err.Error(), Route: r.name})
			return
		}
		if dl := start.Add(d); dl.Before(deadline) {
			deadline = dl
		}
	}
	body, buf, ok := readBody(ctx, r, s.wall(deadline))
	if buf != nil {
		defer bytebufferpool.Put(buf)
	}
	if !ok {
		return
	}

	if r.async != nil {
		if async, wait := prefer(&ctx.Request.Header); async {
			if r.idem == nil || !s.guardJob(ctx, r, body, deadline, wait) {
				s.startJob(ctx, r, body, deadline, wait, nil)
			}
			return
		}
	}
	if r.idem != nil && s.guard(ctx, r, body, deadline) {
		return
	}
	s.run(ctx, r, body, deadline, false)
}

// run sends the request upstream under the route's concurrency limit.
// guarded says an idempotency key protects it, which makes repeating it
// safe (retry safety).
func (s *Server) run(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, guarded bool) {
	if r.bulkhead == nil {
		s.exchange(ctx, r, body, deadline, guarded)
		return
	}
	permit, ok := s.acquireSlot(ctx, r, deadline)
	if !ok {
		return
	}
	s.exchange(ctx, r, body, deadline, guarded)
	// A streamed answer holds its slot until the stream ends.
	if rb, ok := ctx.Response.BodyStream().(*relayBody); ok {
		rb.permit, rb.hasPermit = permit, true
		return
	}
	permit.Release(s.clock.Now())
}

// writeTransportProblem answers a failed exchange: 504 when it timed out,
// 502 otherwise, worded by transportText.
func (s *Server) writeTransportProblem(ctx *fasthttp.RequestCtx, r *route, t *target, err error, attempts int) {
	said, timedOut := transportText(err)
	if whole := err.Error(); agentErrorText(err) != whole {
		s.log.Debug("upstream failed", "route", r.name, "upstream", t.name, "error", whole)
	}
	p := problem{Status: fasthttp.StatusBadGateway, Reason: ReasonUpstreamUnavailable, Route: r.name,
		Attempts: attempts, Detail: "the upstream " + t.name + " failed: " + said}
	if timedOut {
		p.Status, p.Reason = fasthttp.StatusGatewayTimeout, ReasonTimeout
		p.Detail = "the upstream " + t.name + " " + said
	}
	writeProblem(ctx, p)
}

// agentErrorText is err's message as an agent may read it: the upstream's
// name as the route gives it is fine, the network's internals are not.
// A *net.OpError's addresses (the IP a named upstream resolved to,
// ballast's own address) and a *net.DNSError's resolver are left out:
// "dial tcp: connect: connection refused", "dial tcp: lookup
// api.example: no such host". The debug log has the whole error.
func agentErrorText(err error) string {
	msg := err.Error()
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil && (oe.Source != nil || oe.Addr != nil) {
		msg = strings.Replace(msg, oe.Error(), oe.Op+" "+oe.Net+": "+oe.Err.Error(), 1)
	}
	var de *net.DNSError
	if errors.As(err, &de) && de.Server != "" {
		msg = strings.Replace(msg, " on "+de.Server, "", 1)
	}
	return msg
}

// writeBodyTooLarge answers a request whose body is over r's max_body,
// and closes the connection: the rest of the body is never read.
func writeBodyTooLarge(ctx *fasthttp.RequestCtx, r *route) {
	writeProblem(ctx, problem{Status: fasthttp.StatusRequestEntityTooLarge, Reason: ReasonBodyTooLarge, Route: r.name,
		Detail: "the request body is larger than this route's limit of " + formatBytes(r.maxBody)})
	ctx.SetConnectionClose()
}

// expectContinue decides an agent's Expect: 100-continue before its body
// is sent, so that the agent does not upload what would be refused: what
// ballast never forwards (refuseEarly) and a Content-Length over the
// route's max_body (413) are answered at once. Everything else continues,
// and is decided as usual once the body is there.
func (s *Server) expectContinue(ctx *fasthttp.RequestCtx) int {
	start := time.Now()
	s.ids.assign(ctx)
	if s.refuseEarly(ctx, start) {
		if code := ctx.Response.StatusCode(); code != fasthttp.StatusContinue {
			return code
		}
	}
	t := s.table.Load()
	r := t.match(ctx.Host(), ctx.Path(), ctx.Method())
	if r == nil || int64(ctx.Request.Header.ContentLength()) <= r.maxBody {
		return fasthttp.StatusContinue
	}
	writeBodyTooLarge(ctx, r)
	tr := trailPool.Get().(*trail)
	tr.start = start
	end := time.Now()
	s.finishTrail(ctx, tr, r.name, t.cfg.Log, end)
	r.m.observe(fasthttp.StatusRequestEntityTooLarge, end.Sub(start).Seconds())
	return fasthttp.StatusRequestEntityTooLarge
}

// readBody returns the request body, enforcing the route's limit. It
// answers 413 itself and returns ok=false when the body is too large. buf,
// when not nil, must be returned to bytebufferpool after the exchange.
//
// The request's deadline (wall clock) bounds the read: an agent whose body
// trickles in past it gets 408, not the listener's 5-minute read timeout.
// The deadline is set only once a read must wait on the socket: a body
// fasthttp already holds costs no timer.
func readBody(ctx *fasthttp.RequestCtx, r *route, deadline time.Time) (body []byte, buf *bytebufferpool.ByteBuffer, ok bool) {
	tooLarge := func() { writeBodyTooLarge(ctx, r) }
	if int64(ctx.Request.Header.ContentLength()) > r.maxBody {
		tooLarge()
		return nil, nil, false
	}
	stream := ctx.Request.BodyStream()
	if stream == nil {
		b := ctx.Request.Body()
		if int64(len(b)) > r.maxBody {
			tooLarge()
			return nil, nil, false
		}
		return b, nil, true
	}
	buf = bytebufferpool.Get()
	for reads := 0; ; reads++ {
		if len(buf.B) == cap(buf.B) {
			buf.B = append(buf.B, 0)[:len(buf.B)]
		}
		if reads == 1 {
			if c := agentSocket(ctx); c != nil {
				// The next request's read sets fasthttp's own deadline again.
				_ = c.SetReadDeadline(deadline)
			}
		}
		n, err := stream.Read(buf.B[len(buf.B):cap(buf.B)])
		buf.B = buf.B[:len(buf.B)+n]
		if int64(len(buf.B)) > r.maxBody {
			tooLarge()
			return nil, buf, false
		}
		if err == io.EOF {
			return buf.B, buf, true
		}
		if err != nil {
			p := problem{Status: fasthttp.StatusBadRequest, Reason: ReasonBadRequest, Route: r.name,
				Detail: "reading the request body failed: " + agentErrorText(err)}
			switch {
			case isTimeout(err):
				p.Status, p.Reason = fasthttp.StatusRequestTimeout, ReasonTimeout
				p.Detail = "the request body did not arrive within the request's deadline (timeouts.total or X-Ballast-Timeout)"
			case errors.Is(err, rawio.ErrHalted):
				// Shutdown's drain ran out of time before the body
				// arrived (conns.halt): nothing went upstream.
				p.Status, p.Reason = fasthttp.StatusServiceUnavailable, ReasonShuttingDown
				p.Detail = "ballast is shutting down, and its drain ran out of time before the request body arrived; nothing was sent upstream"
				if tr := trailOf(ctx); tr != nil {
					tr.stop = ReasonShuttingDown
				}
			}
			writeProblem(ctx, p)
			ctx.SetConnectionClose()
			return nil, buf, false
		}
	}
}

// buildOutbound fills out from the inbound request: headers minus
// hop-by-hop, X-Ballast-* and the status page's session cookie, the
// upstream's scheme, host and path, the forwarding headers and the route's
// header rules.
func buildOutbound(out *fasthttp.Request, ctx *fasthttp.RequestCtx, r *route, t *target, body []byte) {
	in := &ctx.Request.Header
	// Every Connection line counts: a second one may name what the
	// first does not (RFC 9110 §7.6.1).
	connection := in.PeekAll("Connection")
	// The Cookie lines go up as the agent wrote them (copyCookies); a
	// request rebuilt from an async job's record has no raw lines, and
	// takes fasthttp's parsed ones.
	raw, cookies := len(in.RawHeaders()) > 0, false
	for k, v := range in.All() {
		if skipHeader(k, inboundSkip) || hasPrefixFold(k, ballastPrefix) || listedInAny(connection, k) {
			continue
		}
		if raw && bytes.Equal(k, strCookie) {
			cookies = true
			continue
		}
		out.Header.AddBytesKV(k, v)
	}
	// fasthttp would add application/octet-stream to a body without one.
	out.Header.SetNoDefaultContentType(true)
	if cookies {
		copyCookies(&out.Header, in)
	} else {
		out.Header.DelCookie(statusCookie)
	}
	out.Header.SetMethodBytes(ctx.Method())

	var scratch [512]byte
	uri := out.URI()
	uri.SetSchemeBytes(t.up.scheme)
	uri.SetHostBytes(t.up.host)
	// Both paths are escaped already: fasthttp must not decode them again.
	uri.DisablePathNormalizing = true
	// The agent's escapes are kept where they can be (rawpath.go).
	p, kept := r.appendRawUpstreamPath(scratch[:0], t, ctx.URI().PathOriginal(), ctx.Path())
	if !kept {
		p = r.appendUpstreamPath(scratch[:0], t, ctx.Path())
	}
	query := ctx.URI().QueryString()
	if len(query) == 0 && hasEmptyQuery(ctx.Request.Header.RequestURI()) {
		// "/p?" is not "/p" (RFC 3986 §6.2.3), and fasthttp's URI has
		// no empty query: the '?' goes out on the path, which is sent as
		// it is.
		p = append(p, '?')
	}
	uri.SetPathBytes(p)
	uri.SetQueryStringBytes(query)
	out.Header.SetHostBytes(t.up.host)

	xff := scratch[:0]
	for _, v := range in.PeekAll("X-Forwarded-For") { // every line: one list (RFC 9110 §5.3)
		xff = append(append(xff, v...), ", "...)
	}
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		xff = ta.AddrPort().Addr().Unmap().AppendTo(xff)
	} else {
		xff = append(xff, "unknown"...)
	}
	out.Header.SetBytesV("X-Forwarded-For", xff)
	if ctx.IsTLS() {
		out.Header.Set("X-Forwarded-Proto", "https")
	} else {
		out.Header.Set("X-Forwarded-Proto", "http")
	}
	out.Header.SetBytesV(headerRequestID, ctx.Response.Header.Peek(headerRequestID))

	for _, k := range t.removeHeaders {
		out.Header.DelBytes(k)
	}
	for _, kv := range t.setHeaders {
		// Set replaces only the first line: an agent's second line of
		// the header (its own Authorization beside the route's) must go.
		out.Header.DelBytes(kv[0])
		out.Header.SetBytesKV(kv[0], kv[1])
	}
	if len(body) > 0 {
		out.SetBodyRaw(body)
	}
}

var (
	strHTTP11  = []byte("HTTP/1.1")
	strCookie  = []byte("Cookie")
	strSession = []byte(statusCookie)
)

// copyCookies adds the agent's Cookie lines to out as written, joined in
// one line (RFC 6265 §5.4), but for the status page's session cookie:
// cookies are not isolated by port, so a browser signed in to the admin
// listener sends its session to this listener on the same host too. The
// line bypasses fasthttp's cookie parser, which unquotes values and drops
// a cookie whose value holds a backslash or a quote (Python's quoted
// cookies, "a\054b"); nothing in ballast parses out's cookies afterwards,
// and a headers.set of Cookie deletes this line first.
func copyCookies(out *fasthttp.RequestHeader, in *fasthttp.RequestHeader) {
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	for k, v := range in.AllInOrder() {
		if !asciiEqualFold(k, strCookie) {
			continue
		}
		if !bytes.Contains(v, strSession) {
			buf.B = appendCookies(buf.B, v)
			continue
		}
		buf.B = withoutCookie(buf.B, v, strSession)
	}
	if len(buf.B) > 0 {
		// Not a special header for this call: stored as the line it is.
		out.DisableSpecialHeader()
		out.AddBytesKV(strCookie, buf.B)
		out.EnableSpecialHeader()
	}
}

// appendCookies appends the cookie-pairs v to those in dst.
func appendCookies(dst, v []byte) []byte {
	if v = bytes.TrimSpace(v); len(v) == 0 {
		return dst
	}
	if len(dst) > 0 {
		dst = append(dst, "; "...)
	}
	return append(dst, v...)
}

// withoutCookie appends to dst the cookie-pairs of a Cookie value but
// those named name, joined by "; ".
func withoutCookie(dst, v, name []byte) []byte {
	for len(v) > 0 {
		pair := v
		if i := bytes.IndexByte(v, ';'); i >= 0 {
			pair, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if n, _, _ := bytes.Cut(pair, []byte("=")); !bytes.Equal(bytes.TrimSpace(n), name) {
			dst = appendCookies(dst, pair)
		}
	}
	return dst
}

// relay copies the upstream response to the agent. The body streams: it is
// never held in memory, and SSE events reach the agent as they arrive.
func (s *Server) relay(ctx *fasthttp.RequestCtx, r *route, t *target, resp *fasthttp.Response, deadline time.Time, attempts int) {
	var idBuf [maxRequestIDLen]byte
	id := idBuf[:copy(idBuf[:], ctx.Response.Header.Peek(headerRequestID))]

	h := &ctx.Response.Header
	resp.Header.CopyTo(h)
	// CopyTo also copies the client response's wish for a default
	// Content-Type; an answer without one must reach the agent without one.
	h.SetNoDefaultContentType(true)
	// The status line is ballast's, not the upstream's (RFC 9110 §2.5): an
	// HTTP/1.0 upstream's version would tell the agent to ignore the
	// chunked framing ballast relays its body in.
	h.SetProtocol(strHTTP11)
	if hasHeaderIn(h, outboundSkip) { // one pass; most answers carry none of them
		for _, conn := range resp.Header.PeekAll("Connection") {
			for len(conn) > 0 {
				var tok []byte
				tok, conn = nextToken(conn)
				if len(tok) > 0 {
					h.DelBytes(tok)
				}
			}
		}
		for _, k := range outboundSkip {
			h.DelBytes(k)
		}
	}
	h.ResetConnectionClose()
	// X-Ballast-* is ballast's namespace, on answers as on requests: an
	// upstream's lines (another ballast in front of it, or any server)
	// would pass for ours, in the agent's headers, the trail and /status,
	// telling of a fallback, a job or a retry that never happened here.
	delPrefixed(h, ballastPrefix)
	if up := h.Peek(headerRequestID); len(up) > 0 && !bytes.Equal(up, id) {
		h.SetBytesV(headerRequestIDBallast, id)
	} else {
		h.SetBytesV(headerRequestID, id)
	}
	var nb [20]byte
	h.SetBytesV(headerAttempts, strconv.AppendInt(nb[:0], int64(attempts), 10))
	h.Set(headerUpstream, t.name)

	stream := resp.BodyStream()
	if stream == nil {
		if b := resp.Body(); len(b) > 0 {
			// Copied, not swapped: a swap hands the pool the agent
			// response's emptied buffer, fasthttp's pool then sizes
			// itself by those empty lengths and drops every full one,
			// and each response read allocates a new buffer (about 1 KiB
			// per request at saturation, a GC every 4 ms).
			ctx.Response.SetBody(b)
		}
		fasthttp.ReleaseResponse(resp)
		return
	}
	if ub, ok := stream.(interface {
		bound(time.Duration, time.Time)
		patient(time.Duration, func() bool)
	}); ok {
		if ctx.IsGet() && validate.IsStream(resp.Header.ContentType()) {
			// A GET stream (MCP's standalone event stream, an NDJSON
			// feed) is quiet until the server has news: silence does not
			// end it, and neither does the total deadline; the agent
			// leaving does.
			every := r.idle
			if every <= 0 {
				every = time.Minute
			}
			ub.patient(every, func() bool { return !agentDone(ctx) })
		} else {
			ub.bound(r.idle, deadline)
		}
	}
	size := resp.Header.ContentLength()
	if size < 0 {
		size = -1
	}
	rb := acquireRelayBody(s, r, t, resp, stream, id)
	// The agent must keep reading: each chunk is written within the
	// route's idle timeout and, but for a standing event stream, by the
	// request's deadline (timeouts.total).
	if ctx.IsGet() && validate.IsStream(resp.Header.ContentType()) {
		rb.bound(agentSocket(ctx), max(r.idle, time.Minute), time.Time{})
	} else {
		rb.bound(agentSocket(ctx), r.idle, deadline)
	}
	if w, ok := stream.(interface{ watch(*tryCancel) }); ok {
		// An agent that hangs up mid-stream calls the rest off, as one
		// that hangs up before the answer does (agentWatch); a detached
		// (keyed) call runs on. Either can be called off by Shutdown
		// (liveStreams.stop).
		rb.halt = &rb.own
		if tr := trailOf(ctx); tr != nil && !tr.detached {
			if rc := agentConn(ctx); rc != nil {
				rb.watch = s.agents.add(rc, time.Now())
				rb.halt = &rb.watch.cancel
			}
		}
		w.watch(rb.halt)
	}
	ctx.Response.SetBodyStream(rb, size)
	// A stream's headers (an event stream's, NDJSON's: validate.IsStream)
	// go out as they came, not with its first event: a model thinking
	// before its first token, or a standing MCP stream with no news yet,
	// must not look to the agent's HTTP client like an upstream that never
	// answered. Other chunked answers (JSON of unknown length) keep their
	// headers for the first body write: one write, not two.
	ctx.Response.ImmediateHeaderFlush = validate.IsStream(resp.Header.ContentType())
}

func parseTimeoutHeader(v []byte) (time.Duration, error) {
	d, err := time.ParseDuration(string(v))
	if err != nil {
		return 0, errors.New("not a Go duration such as 5s or 1500ms")
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

// hasEmptyQuery reports whether a request-target has a '?' that starts
// no query: one at its end, or before a fragment.
func hasEmptyQuery(target []byte) bool {
	if i := bytes.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	return len(target) > 0 && target[len(target)-1] == '?'
}

// hasHeaderIn reports whether h holds a header named in list (any case).
func hasHeaderIn(h *fasthttp.ResponseHeader, list [][]byte) bool {
	for k := range h.All() {
		if skipHeader(k, list) {
			return true
		}
	}
	return false
}

func skipHeader(k []byte, list [][]byte) bool {
	for _, s := range list {
		if asciiEqualFold(k, s) {
			return true
		}
	}
	return false
}

func hasPrefixFold(k []byte, prefix string) bool {
	return len(k) >= len(prefix) && asciiEqualFold(k[:len(prefix)], []byte(prefix))
}

// delPrefixed deletes every line of h whose name starts with prefix (any
// case). It costs one pass over h when there is none, the usual case, and
// allocates nothing.
func delPrefixed(h *fasthttp.ResponseHeader, prefix string) {
	for range h.Len() + 1 { // each pass deletes a name: bounded, whatever h holds
		var name []byte
		for k := range h.All() {
			if hasPrefixFold(k, prefix) {
				name = k
				break
			}
		}
		if name == nil {
			return
		}
		h.DelBytes(name) // copies name before it changes h
	}
}

// listedIn reports whether name is one of the comma-separated tokens of a
// Connection header value.
func listedIn(connection, name []byte) bool {
	for len(connection) > 0 {
		var tok []byte
		tok, connection = nextToken(connection)
		if asciiEqualFold(tok, name) {
			return true
		}
	}
	return false
}

// nextToken splits the first element off a comma-separated list, trimmed
// of spaces, and returns it with the rest.
func nextToken(list []byte) (tok, rest []byte) {
	if i := bytes.IndexByte(list, ','); i >= 0 {
		return bytes.TrimSpace(list[:i]), list[i+1:]
	}
	return bytes.TrimSpace(list), nil
}

// listedInAny reports whether name is listed in any of the Connection
// header values.
func listedInAny(connections [][]byte, name []byte) bool {
	for _, c := range connections {
		if listedIn(c, name) {
			return true
		}
	}
	return false
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}
