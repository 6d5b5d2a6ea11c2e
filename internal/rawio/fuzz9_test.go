package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// refFirstBlank is the slow reference for where a request head ends: after
// the empty lines that may precede the request line (RFC 9112 §2.2; any
// run of CR and LF, as startsRequestLine skips), the first LF that ends an
// empty line ("\n\n", or "\n\r\n"). It returns the index just past that LF
// and whether the blank line was CRLF CRLF, or -1 when b holds none.
func refFirstBlank(b []byte) (end int, crlf bool) {
	i := 0
	for i < len(b) && (b[i] == '\r' || b[i] == '\n') {
		i++
	}
	for j := i + 1; j < len(b); j++ {
		if b[j] != '\n' {
			continue
		}
		if b[j-1] == '\n' {
			return j + 1, false
		}
		if j-2 >= i && b[j-1] == '\r' && b[j-2] == '\n' {
			return j + 1, j-3 >= i && b[j-3] == '\r'
		}
	}
	return -1, false
}

// refBareHead follows the heads in b as a lenient HTTP/1 reader would: a
// head ends at its first blank line (refFirstBlank); after one that CRLF
// CRLF ended come its body (Content-Length bytes) and the next head. It
// returns where the first head a bare LF ended begins, or -1 when the
// heads read so far end well, or the chain stops (a chunked or upgraded
// head, whose body it does not follow). strict reports that every head
// before it declared no body and began, after its empty lines, with a
// request line: the pipelined heads the watcher documents it follows.
func refBareHead(b []byte) (start int, strict bool) {
	strict = true
	for pos := 0; pos < len(b); {
		if pos > 0 && !startsRequestLine(b[pos:]) {
			strict = false
		}
		end, crlf := refFirstBlank(b[pos:])
		switch {
		case end < 0:
			return -1, false
		case !crlf:
			return pos, strict
		}
		n, declared, ok := refBodyLength(b[pos : pos+end])
		if !ok {
			return -1, false
		}
		if declared {
			strict = false
		}
		pos += end + n
	}
	return -1, false
}

// refBodyLength is the length of the body a head declares: its
// Content-Length (0 without one; declared reports one), and false for a
// Transfer-Encoding, an Upgrade or a Content-Length that is not digits.
func refBodyLength(head []byte) (n int, declared, ok bool) {
	for _, line := range strings.Split(string(head), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "transfer-encoding", "upgrade":
			return 0, true, false
		case "content-length":
			v, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil || v < 0 {
				return 0, true, false
			}
			n, declared = v, true
		}
	}
	return n, declared, true
}

// splitReads cuts b into reads whose lengths the fuzzer picks.
func splitReads(b, cuts []byte) [][]byte {
	var reads [][]byte
	for i := 0; len(b) > 0; i++ {
		n := len(b)
		if i < len(cuts) {
			n = min(n, 1+int(cuts[i])%64)
		}
		reads = append(reads, b[:n])
		b = b[n:]
	}
	return reads
}

// FuzzHeadWatch feeds a request head, and what follows it, split across
// reads as the fuzzer chooses, to the watcher Read consults. Properties,
// against the references refFirstBlank and refBareHead:
//   - soundness: the watcher stalls only once a head a bare LF ended has
//     been read: never on heads that CRLF CRLF ended, however they are
//     split and whatever empty lines precede their request lines, nor on
//     the bodies after them;
//   - completeness: a first head a bare LF ended is refused once its blank
//     line is read, when the first read held the whole request line and
//     the bytes read so far hold no CRLF CRLF after the leading empty lines
//     (the cases the watcher documents as unsure, and a parser that needs
//     no more); and a pipelined head a bare LF ended, read in one read
//     with the body-less heads before it, is refused when no CRLF CRLF
//     follows its start.
func FuzzHeadWatch(f *testing.F) {
	f.Add([]byte(""), []byte("Host: x\r\n\r\n"), []byte{3, 7})
	f.Add([]byte{1, 1}, []byte("Host: x\r\n\r\n"), []byte{22, 0, 0})
	f.Add([]byte{0, 1}, []byte("Host: x\n\n"), []byte{20, 1})
	f.Add([]byte(""), []byte("Host: x\r\n\n"), []byte{15, 15, 2})
	f.Add([]byte{1, 0, 1}, []byte("A: b\nC: d\r\n\r\nbody\n\n"), []byte{1, 2, 3, 4, 5})
	f.Add([]byte(""), []byte("Host: x\r\n\r\nGET /y HTTP/1.1\nHost: y\n\n"), []byte{})
	f.Add([]byte(""), []byte("Host: x\r\n\r\nGET /y HTTP/1.1\r\n\r\n\r\nPOST /z HTTP/1.1\r\nHost: z\r\n\n"), []byte{})
	f.Add([]byte(""), []byte("Content-Length: 27\r\n\r\nGET /body HTTP/1.1\nA: b\n\n"), []byte{})
	f.Add([]byte(""), []byte("Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /y HTTP/1.1\n\n"), []byte{})
	f.Add([]byte(""), []byte("Host: x\r\n\r\nGET /y HTTP/1.1\nHost: y\n\n"), []byte{40, 3, 3})
	f.Add([]byte(""), []byte("Host: x\r\n\r\nGET /y HTTP/1.1\r\nA: b\n\nGET /z HTTP/1.1\r\n\r\n"), []byte{})
	f.Fuzz(func(t *testing.T, lead, rest, cuts []byte) {
		if len(lead) > 8 {
			lead = lead[:8]
		}
		var b []byte
		for _, c := range lead { // empty lines before the request line
			b = append(b, "\r\n"[c&1])
		}
		b = append(b, "GET /x HTTP/1.1\r\n"...)
		b = append(b, rest...)
		end, crlf := refFirstBlank(b)
		reads := splitReads(b, cuts)

		skip := len(b) - len(bytes.TrimLeft(b, "\r\n"))
		var h headWatch
		h.start()
		seen := 0
		for i, p := range reads {
			h.saw(p)
			seen += len(p)
			if h.stalled() {
				if start, _ := refBareHead(b[:seen]); start < 0 {
					t.Fatalf("%q split as %q refused after read %d, with no head a bare LF ended", b, reads, i)
				}
			}
			if end < 0 || crlf {
				continue
			}
			// A CRLF CRLF read (in one read or across two, past the bare
			// LF or not) ends the head for the parser: nothing stalls.
			sawCRLFCRLF := bytes.Contains(b[min(skip, seen):seen], crlfcrlf)
			if seen >= end && !sawCRLFCRLF && startsRequestLine(reads[0]) && !h.stalled() {
				t.Fatalf("head %q ended by a bare LF at %d, split as %q, not refused after read %d", b, end, reads, i)
			}
			if seen >= end {
				return // the reader does not ask for more
			}
		}
		if start, strict := refBareHead(b); len(reads) == 1 && start > 0 && strict &&
			!bytes.Contains(b[start:], crlfcrlf) && !h.stalled() {
			t.Fatalf("%q: the pipelined head at %d, which a bare LF ended, read in one read, not refused", b, start)
		}
	})
}

// TestHeadWatchLeadingEmptyLines: a head after bare-LF empty lines (RFC
// 9112 §2.2 lets a server skip them, and fasthttp does), whose CRLF CRLF
// comes in a later segment, is read on a Listener's connection, not
// refused as a bare-LF head: FuzzHeadWatch's first crasher, end to end.
func TestHeadWatchLeadingEmptyLines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listener{Listener: ln}
	defer l.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))

	first := "\n\nGET /x HTTP/1.1\r\nHost: x\r\n"
	if _, err := io.WriteString(client, first); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := io.ReadFull(server, buf[:len(first)]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(client, "\r\n"); err != nil {
		t.Fatal(err)
	}
	n, err := io.ReadFull(server, buf[:2])
	if errors.Is(err, ErrBareLFHead) || err != nil || string(buf[:n]) != "\r\n" {
		t.Fatalf("the end of the head read as %q, %v", buf[:n], err)
	}
}
