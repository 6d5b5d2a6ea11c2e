package cache

import (
	"bytes"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/internal/ascii"
	"github.com/valyala/fasthttp"
)

// Entry is one stored response. It is immutable once handed to Cache.Set:
// Get returns the shared *Entry, which readers must not modify.
type Entry struct {
	// Status is the response status code.
	Status int
	// Header holds the end-to-end response headers as "Name: value\r\n"
	// lines, in upstream order, without hop-by-hop headers, Content-Length,
	// Age, Date, Set-Cookie and X-Ballast-* (see NewEntry); a body-less
	// answer's (a HEAD's) Content-Length is kept, last (see
	// AppendResponseHeader). One compact slice rather than pairs keeps an
	// entry to three allocations.
	Header []byte
	// Body is the response body as relayed (still Content-Encoded if the
	// upstream encoded it; Content-Encoding is kept in Header).
	Body []byte
	// StoredAt is when the response was first received. Age is measured
	// from Received, which a Refresh may move later.
	StoredAt time.Time
	// Lifetime is the freshness the upstream gave the response, when
	// HasLifetime (see the function Lifetime); the route's ttl caps it.
	Lifetime    time.Duration
	HasLifetime bool
	// InitialAge is the upstream's own Age when it was received (a cache
	// in front of it had held it that long): counted into the entry's age
	// (RFC 9111 §4.2.3).
	InitialAge time.Duration

	// refreshed is the Unix nanoseconds of the latest Cache.Refresh, 0
	// before any. Read and written atomically: it is the one field of a
	// stored entry that changes.
	refreshed int64
}

// Received is when the stored response was last received: StoredAt, or
// the time of the latest Cache.Refresh when it found the same answer again.
func (e *Entry) Received() time.Time {
	if ns := atomic.LoadInt64(&e.refreshed); ns != 0 {
		return time.Unix(0, ns)
	}
	return e.StoredAt
}

// matches reports whether resp is the answer e holds: the same status,
// the same storable headers in the same order, and the same body. It does
// not allocate.
func (e *Entry) matches(resp *fasthttp.Response) bool {
	if e.Status != resp.StatusCode() || !bytes.Equal(e.Body, resp.Body()) {
		return false
	}
	rest := e.Header
	conns := resp.Header.PeekAll(fasthttp.HeaderConnection)
	for k, v := range resp.Header.All() {
		if skipStoredHeader(k) || namedIn(conns, k) {
			continue
		}
		var ok bool
		if rest, ok = cutLine(rest, k, v); !ok {
			return false
		}
	}
	if n, ok := bodylessLength(resp); ok {
		var buf [20]byte
		var ok bool
		if rest, ok = cutLine(rest, []byte(fasthttp.HeaderContentLength), strconv.AppendInt(buf[:0], int64(n), 10)); !ok {
			return false
		}
	}
	return len(rest) == 0
}

// cutLine returns what follows the line "k: v\r\n" at the start of
// stored, and whether stored starts with it.
func cutLine(stored, k, v []byte) ([]byte, bool) {
	n := len(k) + len(": ") + len(v) + len("\r\n")
	if len(stored) < n {
		return stored, false
	}
	line := stored[:n]
	if !bytes.Equal(line[:len(k)], k) || string(line[len(k):len(k)+2]) != ": " ||
		!bytes.Equal(line[len(k)+2:n-2], v) || string(line[n-2:]) != "\r\n" {
		return stored, false
	}
	return stored[n:], true
}

// entryOverhead approximates the bytes an entry costs beyond Header and
// Body: the struct, the LRU element and the map slot.
const entryOverhead = 160

// Size is the number of bytes the entry is charged against Config.MaxBytes.
func (e *Entry) Size() int64 { return int64(len(e.Header)+len(e.Body)) + entryOverhead }

// NewEntry copies resp's status, storable headers and body into a new Entry
// stored at now. Call it on the upstream response before ballast adds its
// own headers (X-Request-Id and X-Ballast-* are skipped anyway).
func NewEntry(resp *fasthttp.Response, now time.Time) *Entry {
	e := &Entry{
		Status:   resp.StatusCode(),
		Header:   AppendResponseHeader(nil, resp),
		Body:     bytes.Clone(resp.Body()),
		StoredAt: now,
	}
	e.Lifetime, e.HasLifetime = Lifetime(e.Header, now)
	if a := deltaSeconds(resp.Header.Peek(fasthttp.HeaderAge)); a > 0 {
		e.InitialAge = min(a, maxDeltaSeconds) // RFC 9111 §1.2.2: no larger than 2^31 s
	}
	return e
}

// AppendHeader appends h's storable headers to dst as "Name: value\r\n"
// lines. Skipped: hop-by-hop headers (Connection, Keep-Alive,
// Proxy-Connection, Transfer-Encoding, TE, Trailer, Upgrade,
// Proxy-Authenticate, and every header the Connection lines name, RFC 9111
// §3.1), Content-Length (recomputed from the body), Age and Date (they
// describe a moment, not the response), Set-Cookie (never shared) and
// X-Ballast-* and X-Request-Id (ballast's own, per request).
func AppendHeader(dst []byte, h *fasthttp.ResponseHeader) []byte {
	conns := h.PeekAll(fasthttp.HeaderConnection)
	for k, v := range h.All() {
		if skipStoredHeader(k) || namedIn(conns, k) {
			continue
		}
		dst = append(dst, k...)
		dst = append(dst, ": "...)
		dst = append(dst, v...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// AppendResponseHeader is AppendHeader for a buffered response, plus
// the Content-Length of a body-less answer (a HEAD's: a positive
// Content-Length and no body), whose body is not there to recompute it
// from: replayed to a HEAD, the answer still tells the GET's length (RFC
// 9110 §9.3.2), as the relayed one did.
func AppendResponseHeader(dst []byte, resp *fasthttp.Response) []byte {
	dst = AppendHeader(dst, &resp.Header)
	if n, ok := bodylessLength(resp); ok {
		dst = append(dst, fasthttp.HeaderContentLength...)
		dst = append(dst, ": "...)
		dst = strconv.AppendInt(dst, int64(n), 10)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// bodylessLength is the Content-Length of resp when it is a body-less
// answer to a HEAD: buffered, empty, and saying it has a body.
func bodylessLength(resp *fasthttp.Response) (int, bool) {
	n := resp.Header.ContentLength()
	return n, n > 0 && !resp.IsBodyStream() && len(resp.Body()) == 0
}

// namedIn reports whether a Connection line in conns names header k.
func namedIn(conns [][]byte, k []byte) bool {
	for _, c := range conns {
		for d := range Members(c) {
			if bytes.EqualFold(d, k) {
				return true
			}
		}
	}
	return false
}

func skipStoredHeader(k []byte) bool {
	if len(k) > len("x-ballast-") && ascii.EqualFoldLower(k[:len("x-ballast-")], "x-ballast-") {
		return true
	}
	for _, name := range [...]string{
		"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
		"upgrade", "proxy-authenticate", "content-length", "age", "date", "set-cookie", "x-request-id",
	} {
		if ascii.EqualFoldLower(k, name) {
			return true
		}
	}
	return false
}

// Headers calls yield for each stored header line until it returns false.
// name and value alias e.Header and must not be modified.
func (e *Entry) Headers(yield func(name, value []byte) bool) { headerLines(e.Header, yield) }

// headerLines calls yield for each "Name: value" line of header (lines
// ended by CRLF, as Entry.Header stores them; one without ": " is
// skipped) until it returns false. name and value alias header.
func headerLines(header []byte, yield func(name, value []byte) bool) {
	rest := header
	for len(rest) > 0 {
		line := rest
		if i := bytes.Index(rest, []byte("\r\n")); i >= 0 {
			line, rest = rest[:i], rest[i+2:]
		} else {
			rest = nil
		}
		name, value, ok := bytes.Cut(line, []byte(": "))
		if !ok {
			continue
		}
		if !yield(name, value) {
			return
		}
	}
}

// WriteResponse sets resp's status, headers and body from e. Existing
// headers are kept (stored ones are added), so call it on a fresh response.
// The body is attached without copying (fasthttp SetBodyRaw): e.Body is
// immutable, and fasthttp copies before any in-place append.
func (e *Entry) WriteResponse(resp *fasthttp.Response) {
	resp.SetStatusCode(e.Status)
	e.Headers(func(name, value []byte) bool {
		resp.Header.AddBytesKV(name, value)
		return true
	})
	resp.SetBodyRaw(e.Body)
}
