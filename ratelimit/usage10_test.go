package ratelimit

import (
	"slices"
	"strings"
	"testing"
)

// TestEventDataLineEnds pins the parts of WHATWG's event stream format
// (HTML §9.2.6) that eachEventData once missed: a lone CR ends a line as
// LF and CRLF do (CRLF being one end, not two), a "data" line without a
// colon adds an empty line to the event's data, and a byte order mark
// starts the stream unseen.
func TestEventDataLineEnds(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []string
	}{
		{name: "lone CR", stream: "data: a\r\rdata: b\r\r", want: []string{"a", "b"}},
		{name: "lone CR, several data lines", stream: "data: a\rdata: b\r\r", want: []string{"a\nb"}},
		{name: "CRLF is one line end", stream: "data: a\r\ndata: b\r\n\r\n", want: []string{"a\nb"}},
		{name: "mixed ends", stream: "data: a\r\ndata: b\rdata: c\n\rdata: d\n\n", want: []string{"a\nb\nc", "d"}},
		{name: "LF CR is two ends", stream: "data: a\n\rdata: b", want: []string{"a", "b"}},
		{name: "CR at the very end", stream: "data: a\r", want: []string{"a"}},
		{name: "data without a colon", stream: "data\ndata: x\ndata\n\n", want: []string{"\nx\n"}},
		{name: "data without a colon alone", stream: "data\n\ndata: y\n\n", want: []string{"", "y"}},
		{name: "data without a colon, CR ends", stream: "data\rdata: x\r\r", want: []string{"\nx"}},
		{name: "other names without a colon", stream: "dat\ndata \nDATA\ndata: z\n\n", want: []string{"z"}},
		{name: "byte order mark", stream: "\ufeffdata: a\n\n", want: []string{"a"}},
		{name: "byte order mark later", stream: "data: a\n\n\ufeffdata: b\n\n", want: []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			eachEventData([]byte(tt.stream), func(data []byte) bool {
				got = append(got, string(data))
				return false
			})
			if !slices.Equal(got, tt.want) {
				t.Errorf("events of %q: %q, want %q", tt.stream, got, tt.want)
			}
			if ref := refEventData(tt.stream); !slices.Equal(ref, tt.want) {
				t.Errorf("the reference reads %q: %q, want %q", tt.stream, ref, tt.want)
			}
		})
	}
}

// TestUsageFromBodyLineEnds: usage is read from streams whose lines end
// at a lone CR, and from streams with colon-less data lines, as from the
// same streams with LF ends. Before lone CRs ended lines, an Anthropic
// stream with them was one long line: no event parsed, no usage.
func TestUsageFromBodyLineEnds(t *testing.T) {
	lf := anthropicStart + anthropicDelta + anthropicEnd
	want := Usage{Input: 910, Output: 50}
	multi := "data: {\"usage\":\ndata\ndata: {\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
	for _, tt := range []struct {
		name, body string
		want       Usage
	}{
		{"LF", lf, want},
		{"lone CR", strings.ReplaceAll(lf, "\n", "\r"), want},
		{"CRLF", strings.ReplaceAll(lf, "\n", "\r\n"), want},
		{"colon-less data lines", strings.ReplaceAll(lf, "\n\n", "\ndata\n\n"), want},
		{"colon-less data line inside an event", multi, Usage{Input: 3, Output: 4}},
		{"the same with lone CRs", strings.ReplaceAll(multi, "\n", "\r"), Usage{Input: 3, Output: 4}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := UsageFromBody([]byte(tt.body)); !ok || got != tt.want {
				t.Errorf("UsageFromBody(%q) = %+v, %v; want %+v", tt.body, got, ok, tt.want)
			}
		})
	}
}

// TestEventDataDoesNotAllocate: lone-CR line ends cost no allocation; only
// joining an event of several data lines may.
func TestEventDataDoesNotAllocate(t *testing.T) {
	stream := []byte(strings.Repeat("event: x\rdata: {\"a\":1}\r\r", 20) + strings.Repeat("data: {\"b\":2}\r\n\r\n", 20) + "data\n\n")
	n := 0
	if allocs := testing.AllocsPerRun(100, func() {
		eachEventData(stream, func(data []byte) bool { n += len(data); return false })
	}); allocs != 0 {
		t.Errorf("eachEventData allocates %v times per stream", allocs)
	}
}
