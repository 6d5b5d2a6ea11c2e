package bench

import (
	"bytes"
	"io"
)

// sseHeadMax is how much of each event's data an sseReader keeps: the
// upstream's stamp is its first member (stampEvent), well inside it.
const sseHeadMax = 256

// sseLineMax is how much of each line an sseReader keeps: a data line's
// field name, its colon and space, and sseHeadMax bytes of its value.
const sseLineMax = len("data: ") + sseHeadMax

// sseReader reads the events of a text/event-stream body as an agent's
// SSE parser does (WHATWG HTML, "event stream interpretation"): lines
// end with CRLF, LF or CR; one leading byte-order mark is dropped; a line
// starting with ':' is a comment; "data:value" and "data: value" are the
// same field (one space after the colon is dropped); fields other than
// data are ignored; and an event is dispatched at the blank line that
// ends it, when it had a data field, its data lines joined by LF. At
// the end of the body an event not yet dispatched is dropped.
//
// It keeps only the first sseHeadMax bytes of each event's data, so an
// event of any length costs no memory. The zero value is not usable;
// reset it onto a body first.
type sseReader struct {
	src  io.Reader
	buf  []byte
	r, w int
	err  error
	// empty counts reads in a row that returned nothing.
	empty int
	// afterCR: the last line ended with CR, so an LF first is part of
	// that ending.
	afterCR bool
	// started: the first line has been read (its BOM dropped).
	started bool
	// line is the current line's head (sseLineMax bytes at most);
	// lineLen its full length.
	line    []byte
	lineLen int
	// data is the pending event's data head; dataLen its full length;
	// dataLines how many data fields it has (0: none, not dispatched).
	data      []byte
	dataLen   int
	dataLines int
}

// reset makes s read src from its start, keeping its buffers.
func (s *sseReader) reset(src io.Reader) {
	if s.buf == nil {
		s.buf = make([]byte, 4<<10)
		s.line = make([]byte, 0, sseLineMax)
		s.data = make([]byte, 0, sseHeadMax)
	}
	*s = sseReader{src: src, buf: s.buf, line: s.line[:0], data: s.data[:0]}
}

// discardRest reads the rest of the body without parsing it, and reports
// whether the body ended cleanly (io.EOF) rather than with an error (a
// deadline, a cut).
func (s *sseReader) discardRest() bool {
	s.r = s.w
	if s.err != nil {
		return s.err == io.EOF
	}
	_, err := io.Copy(io.Discard, s.src)
	return err == nil
}

// next returns the next event's data: its first sseHeadMax bytes (valid
// until the next call) and its full length. At the end of the body it
// returns the body's error: io.EOF when the body ended cleanly.
func (s *sseReader) next() (head []byte, n int, err error) {
	for {
		if err := s.readLine(); err != nil {
			return nil, 0, err
		}
		if s.lineLen == 0 {
			if s.dataLines == 0 {
				continue // nothing to dispatch
			}
			head, n = s.data, s.dataLen
			s.data, s.dataLen, s.dataLines = s.data[:0], 0, 0
			return head, n, nil
		}
		s.field()
	}
}

// field applies the current, non-empty, line to the pending event.
func (s *sseReader) field() {
	line := s.line
	if line[0] == ':' {
		return // a comment
	}
	name, value, found := bytes.Cut(line, []byte(":"))
	if string(name) != "data" || (!found && len(line) < s.lineLen) {
		return // another field, or a name longer than "data"
	}
	valueLen := 0
	if found {
		// The head holds all of "data:" and sseHeadMax bytes of the
		// value after it, so value is empty only when the line ends.
		valueLen = s.lineLen - len("data:")
		if len(value) > 0 && value[0] == ' ' {
			value, valueLen = value[1:], valueLen-1
		}
	}
	if s.dataLines > 0 {
		s.keepData([]byte{'\n'})
		s.dataLen++
	}
	s.keepData(value)
	s.dataLen += valueLen
	s.dataLines++
}

func (s *sseReader) keepData(b []byte) {
	s.data = append(s.data, b[:min(len(b), sseHeadMax-len(s.data))]...)
}

// readLine reads the next whole line into s.line and s.lineLen. A line
// the body ends inside is never returned: the body's error is.
func (s *sseReader) readLine() error {
	s.line, s.lineLen = s.line[:0], 0
	for {
		if s.r == s.w {
			if s.err != nil {
				return s.err
			}
			n, err := s.src.Read(s.buf)
			s.r, s.w, s.err = 0, n, err
			if n == 0 && err == nil {
				if s.empty++; s.empty >= 100 { // as bufio gives up
					s.err = io.ErrNoProgress
				}
			} else {
				s.empty = 0
			}
			continue
		}
		chunk := s.buf[s.r:s.w]
		if s.afterCR {
			s.afterCR = false
			if chunk[0] == '\n' {
				s.r++
				continue
			}
		}
		end := bytes.IndexAny(chunk, "\r\n")
		if end < 0 {
			s.keepLine(chunk)
			s.r = s.w
			continue
		}
		s.keepLine(chunk[:end])
		s.afterCR = chunk[end] == '\r'
		s.r += end + 1
		if !s.started {
			s.started = true
			if bom := "\uFEFF"; bytes.HasPrefix(s.line, []byte(bom)) {
				s.line = append(s.line[:0], s.line[len(bom):]...)
				s.lineLen -= len(bom)
			}
		}
		return nil
	}
}

func (s *sseReader) keepLine(b []byte) {
	s.line = append(s.line, b[:min(len(b), sseLineMax-len(s.line))]...)
	s.lineLen += len(b)
}
