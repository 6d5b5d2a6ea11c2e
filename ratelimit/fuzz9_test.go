package ratelimit

import (
	"slices"
	"strings"
	"testing"
)

// refEventData is the WHATWG HTML "event stream interpretation" (§9.2.6)
// of stream, written as the standard reads: a leading byte order mark is
// dropped; lines end at CRLF, LF or CR; a line starting with ':' is a
// comment; a field's name runs to the first ':' and its value starts after
// one optional space, and a line with no ':' is a field name with an empty
// value; each "data" field's value is appended to the data buffer with a
// LF; a blank line dispatches the buffer (without its last LF) when it is
// not empty. One deliberate difference, ballast's: the event pending at
// the end of the stream is dispatched (usage reads the cut-off tail of a
// stream). Events whose data is [DONE] are left out.
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
	stream = strings.TrimPrefix(stream, "\ufeff")
	lines := strings.Split(strings.ReplaceAll(strings.ReplaceAll(stream, "\r\n", "\n"), "\r", "\n"), "\n")
	for _, line := range lines {
		if line == "" {
			dispatch()
			continue
		}
		if line[0] == ':' {
			continue
		}
		name, value, _ := strings.Cut(line, ":")
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
// refEventData, line ends LF, CRLF or a lone CR. The events must be the
// same data, in the same order, and the result must not depend on the
// buffer being reused between events.
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
		"data: a\rdata: b\r\rdata: c\r\n\rdata: d\n\r",
		"data\n\ndata\ndata\n\ndata\rdata: x\r\r",
		"\ufeffdata: bom\n\n\ufeffdata: not a data field\n\n",
		"\r\ndata: after a cut CRLF\r",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
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
