package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// decodeChunked runs ballast's chunked decoder (upstreamBody in
// bodyChunked mode) over in, each read at most the size sizes picks
// (1-64 bytes), and returns the body, the error that ended it (io.EOF at
// a clean end) and the bytes left unread after it.
func decodeChunked(in, sizes []byte) (body []byte, err error, rest []byte) {
	br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
	b := &upstreamBody[pooledConn]{br: br}
	b.start(-1)
	for i := 0; ; i++ {
		k := 17
		if len(sizes) > 0 {
			k = 1 + int(sizes[i%len(sizes)])%64
		}
		p := make([]byte, k)
		n, err := b.read(p)
		if n < 0 || n > k {
			panic(fmt.Sprintf("read returned %d for a %d-byte buffer", n, k))
		}
		body = append(body, p[:n]...)
		if err != nil {
			rest, _ = io.ReadAll(br)
			return body, err, rest
		}
		if n == 0 && i > len(in)+8 {
			return body, errors.New("no progress"), nil
		}
	}
}

// FuzzChunkedDecode is a differential test of the chunked decoder ballast
// reads streamed upstream bodies with, against net/http's
// (httputil.NewChunkedReader): no panic, no read past the buffer, no
// endless loop, and when both accept the input they yield the same body.
// ballast is the more lenient (bare LF line ends, space around the size),
// so a refusal by net/http alone is not a failure.
func FuzzChunkedDecode(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"3;ext=1\r\nabc\r\n0\r\nX-Trailer: v\r\n\r\nNEXT",
		"A\r\n0123456789\r\n0\r\n\r\n",
		"5\nhello\n0\n\n",
		"ffffffffffffffff\r\n",
		"1\r\nab\r\n0\r\n\r\n",
		"0\r\n",
		" 2 \r\nhi\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), []byte{3, 64})
	}
	f.Fuzz(func(t *testing.T, in, sizes []byte) {
		body, err, _ := decodeChunked(in, sizes)
		if err != io.EOF {
			return
		}
		if len(body) > len(in) {
			t.Fatalf("%q decoded to %d bytes, more than its own %d", in, len(body), len(in))
		}
		ref, rerr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in))))
		if rerr == nil && !bytes.Equal(ref, body) {
			t.Fatalf("%q: ballast decoded %q, net/http %q", in, body, ref)
		}
		// The same input read in one go decodes the same.
		if whole, werr, _ := decodeChunked(in, []byte{63}); werr != io.EOF || !bytes.Equal(whole, body) {
			t.Fatalf("%q: %q, %v read 64 bytes at a time; %q, EOF read as %v", in, whole, werr, body, sizes)
		}
	})
}

// FuzzChunkedRoundTrip encodes a body as a well-formed chunked body (chunk
// sizes, hex case, leading zeros, extensions and trailer fields chosen by
// the fuzzer) followed by the next response's bytes, and checks that
// ballast decodes exactly the body and stops exactly at the end of the
// trailer section: the pooled connection must be left at the next
// response, or every response after it on that connection is misread.
func FuzzChunkedRoundTrip(f *testing.F) {
	f.Add([]byte("hello, world"), []byte{5, 200, 1}, uint8(0), []byte{1})
	f.Add([]byte(""), []byte{}, uint8(0xff), []byte{64})
	f.Add(bytes.Repeat([]byte("x"), 300), []byte{255, 1, 0, 17}, uint8(0x5a), []byte{2, 7})
	f.Fuzz(func(t *testing.T, data, cuts []byte, style uint8, sizes []byte) {
		var in []byte
		ext := ""
		if style&1 != 0 {
			ext = `;name="quoted; \"value\""`
		}
		if style&2 != 0 {
			ext += ";bare"
		}
		rest := data
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, 1+int(cuts[i]))
			}
			size := strconv.FormatInt(int64(n), 16)
			if style&4 != 0 {
				size = strings.ToUpper(size)
			}
			if style&8 != 0 {
				size = "00" + size
			}
			in = append(in, size+ext+"\r\n"...)
			in = append(in, rest[:n]...)
			in = append(in, "\r\n"...)
			rest = rest[n:]
		}
		in = append(in, "0"+ext+"\r\n"...)
		for i := range int(style>>4) % 4 {
			in = append(in, "X-Trailer-"+strconv.Itoa(i)+": v\r\n"...)
		}
		in = append(in, "\r\n"...)
		const next = "HTTP/1.1 200 OK\r\n"
		in = append(in, next...)

		body, err, left := decodeChunked(in, sizes)
		if err != io.EOF || !bytes.Equal(body, data) || string(left) != next {
			t.Fatalf("%q: decoded %q, %v, leaving %q; want %q, EOF, leaving %q", in, body, err, left, data, next)
		}
		if ref, rerr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in)))); rerr != nil || !bytes.Equal(ref, data) {
			t.Fatalf("the encoding %q is not well formed: net/http read %q, %v", in, ref, rerr)
		}
	})
}

// refCacheMembers splits a Cache-Status value (RFC 9211) into its members
// the slow way: a character at a time, commas inside quoted strings (with
// their backslash escapes) not splitting, and an unterminated quoted
// string running to the end of the value.
func refCacheMembers(v string) []string { return refSplitQuoted(v, ',') }

// refSplitQuoted splits v at each sep outside quoted strings, as
// refCacheMembers splits at commas.
func refSplitQuoted(v string, sep byte) []string {
	var members []string
	var cur strings.Builder
	quoted, escaped := false, false
	for _, c := range []byte(v) {
		switch {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			members = append(members, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(members, cur.String())
}

// FuzzWithoutCacheMember: dropping ballast's own member from a stored
// Cache-Status agrees with the slow reference split: every other
// non-empty member is kept, trimmed, in order, byte for byte.
func FuzzWithoutCacheMember(f *testing.F) {
	for _, s := range []string{
		`ballast; hit; ttl=10`,
		`Upstream; fwd=miss, ballast; hit`,
		`"a,b"; detail="x, y", BALLAST;fwd=uri-miss, cdn`,
		`cdn; detail="quote \" and , comma", ballast`,
		`cdn; detail="unterminated \`,
		` , ,, ballast`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var want []string
		for _, m := range refCacheMembers(v) {
			m = strings.TrimSpace(m)
			name, _, _ := strings.Cut(m, ";")
			if m == "" || strings.EqualFold(strings.TrimSpace(name), "ballast") {
				continue
			}
			want = append(want, m)
		}
		got := withoutCacheMember([]byte(v), "ballast")
		if string(got) != strings.Join(want, ", ") {
			t.Fatalf("withoutCacheMember(%q) = %q, want %q", v, got, strings.Join(want, ", "))
		}
	})
}

// refPrefer is RFC 7240 §2 read literally: a list of preferences, each a
// token, an optional "=" value (a token or a quoted string, BWS around the
// "="), then ";" parameters; a ",", ";" or "=" inside a quoted string
// separates nothing (refSplitQuoted). Names are case-insensitive, and a
// preference given twice counts only the first time. wait is
// delta-seconds, bare or quoted (a quoted-pair in it makes it none),
// capped at ten minutes as ballast caps it.
func refPrefer(values []string) (async bool, wait time.Duration) {
	seenWait := false
	for _, v := range values {
		for _, pref := range refSplitQuoted(v, ',') {
			pref = refSplitQuoted(pref, ';')[0]
			parts := refSplitQuoted(pref, '=')
			name := strings.ToLower(strings.TrimSpace(parts[0]))
			hasVal, val := len(parts) > 1, ""
			if hasVal {
				val = strings.TrimSpace(pref[len(parts[0])+1:])
			}
			if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1]
			}
			switch {
			case name == "respond-async" && !hasVal:
				async = true
			case name == "wait" && !seenWait:
				seenWait = true
				if val == "" || strings.Trim(val, "0123456789") != "" {
					continue
				}
				if n, err := strconv.ParseInt(val, 10, 64); err == nil && n > 0 {
					wait = min(time.Duration(n)*time.Second, 10*time.Minute)
				} else if err != nil {
					wait = 10 * time.Minute // too many digits: a very long wait
				}
			}
		}
	}
	return async, wait
}

// FuzzPrefer is a differential test of the Prefer header parser (jobs:
// respond-async, wait=N) against refPrefer, over one or two header
// lines, quoted strings holding "," ";" or "=" included.
func FuzzPrefer(f *testing.F) {
	for _, s := range [][2]string{
		{"respond-async", ""}, {"respond-async, wait=10", ""}, {"wait=5", "respond-async"},
		{"RESPOND-ASYNC; foo=bar", ""}, {"wait = 7", ""}, {`wait="30"`, ""}, {"wait=5, wait=100", ""},
		{"wait=-1", ""}, {"wait=+5", ""}, {"wait=99999999999999999999", ""}, {"return=minimal", "handling=lenient"},
		{`respond-async, foo="a,b", wait=10`, ""}, {`foo="a, wait=3", wait=10`, ""},
		{`foo="x\", wait=1", wait=2`, ""}, {`foo="a,respond-async`, "wait=4"},
		{`wait="5;6"`, ""}, {`wait="1,2"`, "respond-async"}, {`x="a=b", respond-async; p="q,r"`, ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		var h fasthttp.RequestHeader
		h.Add("Prefer", a)
		if b != "" {
			h.Add("Prefer", b)
		}
		var values []string
		for _, v := range h.PeekAll("Prefer") { // as fasthttp keeps them
			values = append(values, string(v))
		}
		async, wait := prefer(&h)
		wantAsync, wantWait := refPrefer(values)
		if async != wantAsync || wait != wantWait {
			t.Fatalf("Prefer %q: async %v, wait %v; want %v, %v", values, async, wait, wantAsync, wantWait)
		}
	})
}

// FuzzHeaderLines round-trips request headers through the form jobs store
// them in: whatever header block fasthttp accepts from an agent,
// requestHeaderLines then eachHeaderLine gives back the same fields, in
// the same order, byte for byte (the Cookie lines as written, last); a stored block that is not well formed
// is read without a panic.
func FuzzHeaderLines(f *testing.F) {
	for _, s := range []string{
		"Accept: */*\r\nX-Empty: \r\n",
		"A: b: c\r\nA: d\r\nx-lower: v\r\n",
		"Folded: a\r\n  b\r\nTrail: v \t\r\n",
		"Weird: \x01\x7f\xff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, block []byte) {
		eachHeaderLine(block, func(k, v []byte) {}) // stored bytes may be anything
		var h fasthttp.RequestHeader
		raw := append([]byte("GET / HTTP/1.1\r\nHost: x\r\n"), block...)
		raw = append(raw, "\r\n"...)
		if err := h.Read(bufio.NewReader(bytes.NewReader(raw))); err != nil {
			return
		}
		var want [][2]string
		for k, v := range h.All() {
			if string(k) != "Cookie" {
				want = append(want, [2]string{string(k), string(v)})
			}
		}
		for k, v := range h.AllInOrder() { // Cookie lines as written, last
			if strings.EqualFold(string(k), "Cookie") {
				want = append(want, [2]string{"Cookie", string(v)})
			}
		}
		var got [][2]string
		eachHeaderLine(requestHeaderLines(&h), func(k, v []byte) {
			got = append(got, [2]string{string(k), string(v)})
		})
		if !slices.Equal(got, want) {
			t.Fatalf("headers %q stored and read back as %q", want, got)
		}
	})
}

// FuzzEventStreamType checks the test that keeps an upstream's event
// stream from being buffered (isEventStream, on the Content-Type fasthttp
// parsed from the upstream's head) against mime.ParseMediaType: a
// response whose media type is text/event-stream, with any parameters, in
// any case, is always taken as a stream, and nothing is taken as one
// whose media type does not start with it.
func FuzzEventStreamType(f *testing.F) {
	for _, s := range []string{
		"text/event-stream", "Text/Event-Stream; charset=utf-8", "text/event-stream ;charset=utf-8",
		"text/event-stream\t", "application/json", "text/event-streams", `text/event-stream; a="b;c"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var h fasthttp.ResponseHeader
		raw := "HTTP/1.1 200 OK\r\nContent-Type: " + v + "\r\nContent-Length: 0\r\n\r\n"
		if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			return
		}
		ct := h.ContentType()
		mt, _, err := mime.ParseMediaType(string(ct))
		if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
			return
		}
		got := isEventStream(ct)
		if mt == "text/event-stream" && !got {
			t.Fatalf("Content-Type %q (media type %q) not taken as an event stream", ct, mt)
		}
		if got && !strings.HasPrefix(mt, "text/event-stream") {
			t.Fatalf("Content-Type %q (media type %q) taken as an event stream", ct, mt)
		}
	})
}
