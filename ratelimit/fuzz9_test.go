package ratelimit

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// refEventData is the WHATWG HTML "event stream interpretation" (§9.2.6)
// of stream, written as the standard reads: lines end at CRLF, LF or CR; a
// line starting with ':' is a comment; a field's name runs to the first
// ':' and its value starts after one optional space; each "data" field's
// value is appended to the data buffer with a LF; a blank line dispatches
// the buffer (without its last LF) when it is not empty. Two deliberate
// differences, both ballast's: the event pending at the end of the stream
// is dispatched (usage reads the cut-off tail of a stream), and a "data"
// line without a colon, which adds only an empty line to the data (no
// usage either way), is not a data field. Events whose data is [DONE] are
// left out.
func refEventData(stream string) []string {
	var events []string
	var buf strings.Builder
	dispatch := func() {
		if buf.Len() > 0 {
			data := strings.TrimSuffix(buf.String(), "\n")
			if strings.TrimSpace(data) != "[DONE]" {
				events = append(events, data)
			}
		}
		buf.Reset()
	}
	lines := strings.Split(strings.ReplaceAll(strings.ReplaceAll(stream, "\r\n", "\n"), "\r", "\n"), "\n")
	for _, line := range lines {
		if line == "" {
			dispatch()
			continue
		}
		if line[0] == ':' {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue // a field with no value: only "data" would matter, see above
		}
		value = strings.TrimPrefix(value, " ")
		if name == "data" {
			buf.WriteString(value)
			buf.WriteByte('\n')
		}
	}
	dispatch()
	return events
}

// FuzzEventData is a differential test of the server-sent event parser
// that usage accounting reads streams with (eachEventData) against
// refEventData, on the streams both read the same way: line ends LF or
// CRLF (ballast does not end a line at a lone CR, which no model API
// sends). The events must be the same data, in the same order, and the
// result must not depend on the buffer being reused between events.
func FuzzEventData(f *testing.F) {
	for _, s := range []string{
		"data: {\"usage\":{\"total_tokens\":7}}\n\n",
		"event: message_start\ndata: {\"a\":1}\n\nevent: message_delta\r\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n",
		"data: {\"usage\":\ndata: {\"total_tokens\":1}}\n\n",
		"data:no-space\ndata:  two spaces\n\n",
		": comment\ndata\ndata:\n\n\n\ndata: x",
		"ta: {\"cut\":1}\n\ndata: tail",
		"data: a\ndata: b\ndata: c\n\ndata: d\n\n",
		"id: 1\nretry: 10\ndata: [DONE] \n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		if bytes.Contains(bytes.ReplaceAll(stream, []byte("\r\n"), nil), []byte("\r")) {
			return // a lone CR
		}
		var got []string
		found := eachEventData(stream, func(data []byte) bool {
			got = append(got, string(data))
			return len(data)%2 == 0
		})
		want := refEventData(string(stream))
		if !slices.Equal(got, want) {
			t.Fatalf("events of %q: %q; the reference reads %q", stream, got, want)
		}
		wantFound := slices.ContainsFunc(want, func(d string) bool { return len(d)%2 == 0 })
		if found != wantFound {
			t.Fatalf("eachEventData(%q) reported %v; its callback returned true: %v", stream, found, wantFound)
		}
	})
}
