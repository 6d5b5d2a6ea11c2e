package bench

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// sseReference is the WHATWG event stream interpretation written
// plainly, over a whole body: each dispatched event's data.
func sseReference(body []byte) [][]byte {
	body = bytes.TrimPrefix(body, []byte("\uFEFF"))
	var lines [][]byte
	for len(body) > 0 {
		end := bytes.IndexAny(body, "\r\n")
		if end < 0 {
			break // a line the body ends inside is dropped
		}
		lines = append(lines, body[:end])
		if body[end] == '\r' && end+1 < len(body) && body[end+1] == '\n' {
			end++
		}
		body = body[end+1:]
	}
	var events [][]byte
	var data []byte
	hasData := false
	for _, line := range lines {
		switch {
		case len(line) == 0:
			if hasData {
				events = append(events, bytes.TrimSuffix(data, []byte("\n")))
			}
			data, hasData = nil, false
		case line[0] == ':':
		default:
			name, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			if string(name) == "data" {
				data = append(append(data, value...), '\n')
				hasData = true
			}
		}
	}
	return events
}

// pieces reads src in pieces of the sizes steps gives, in turn (a size
// of 0 reads nothing, as a Read may).
type pieces struct {
	src   []byte
	steps []byte
	i     int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.src) == 0 {
		return 0, io.EOF
	}
	n := len(b)
	if len(p.steps) > 0 {
		n = min(n, int(p.steps[p.i%len(p.steps)]))
		p.i++
	}
	n = copy(b, p.src[:min(n, len(p.src))])
	p.src = p.src[n:]
	return n, nil
}

func FuzzSSEReader(f *testing.F) {
	f.Add([]byte("data: {\"sent_ns\":1,\"id\":\"x\"}\n\ndata: [DONE]\n\n"), []byte{1})
	f.Add([]byte("\uFEFF: c\r\nevent: e\r\ndata:a\r\ndata\r\n\r\ndata: b\r\rdata: tail"), []byte{3, 0, 7})
	f.Add(append(append([]byte("data: "), bytes.Repeat([]byte("x"), 5000)...), "\n\ndata: [DONE]\n\n"...), []byte{255})
	f.Add([]byte("\r\n\n\r\r\ndata: x\r"), []byte{})
	f.Fuzz(func(t *testing.T, body, steps []byte) {
		want := sseReference(body)
		var s sseReader
		s.reset(&pieces{src: body, steps: steps})
		for i := 0; ; i++ {
			head, n, err := s.next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrNoProgress) {
					t.Fatalf("event %d: %v", i, err)
				}
				if errors.Is(err, io.EOF) && i != len(want) {
					t.Fatalf("%d events, want %d: %q", i, len(want), want)
				}
				return
			}
			if i >= len(want) {
				t.Fatalf("event %d %q beyond the %d events of %q", i, head, len(want), body)
			}
			if n != len(want[i]) || !bytes.Equal(head, want[i][:min(len(want[i]), sseHeadMax)]) {
				t.Fatalf("event %d: %q (%d bytes), want %q", i, head, n, want[i])
			}
		}
	})
}

// A reused reader starts afresh: nothing of the last body's pending
// event, line or CR survives reset.
func TestSSEReaderResetForgetsTheLastBody(t *testing.T) {
	var s sseReader
	s.reset(bytes.NewReader([]byte("data: half\r")))
	if _, _, err := s.next(); err != io.EOF {
		t.Fatalf("%v", err)
	}
	s.reset(bytes.NewReader([]byte("\ndata: whole\n\n")))
	head, n, err := s.next()
	if err != nil || string(head) != "whole" || n != 5 {
		t.Fatalf("%q %d %v", head, n, err)
	}
}

// The driver reads every event of every stream through an sseReader,
// on the cores it shares with the targets: reading costs no allocation
// once its buffers exist.
func TestSSEReaderAllocations(t *testing.T) {
	body := bytes.Repeat([]byte("data: {\"sent_ns\":1764000000123456789,\"id\":\"x\"}\r\ndata: more\r\n\r\n"), 20)
	body = append(body, "data: [DONE]\n\n"...)
	var s sseReader
	var src bytes.Reader
	s.reset(&src)
	allocs := testing.AllocsPerRun(100, func() {
		src.Reset(body)
		s.reset(&src)
		for {
			if _, _, err := s.next(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per stream, want 0", allocs)
	}
}
