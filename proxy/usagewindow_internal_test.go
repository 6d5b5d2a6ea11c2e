package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/ballast-proxy/ballast/ratelimit"
)

const (
	windowAnthropicStart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\n"
	windowAnthropicDelta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef\"}}\n\n"
	windowAnthropicEnd   = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	windowOpenAIChunk    = "data: {\"choices\":[{\"delta\":{\"content\":\"0123456789abcdef\"}}],\"usage\":null}\n\n"
	windowOpenAIEnd      = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":60,\"total_tokens\":100}}\n\ndata: [DONE]\n\n"
)

// anthropicStreamOf is an Anthropic stream of about size bytes.
func anthropicStreamOf(size int) string {
	n := max(0, (size-len(windowAnthropicStart)-len(windowAnthropicEnd))/len(windowAnthropicDelta))
	return windowAnthropicStart + strings.Repeat(windowAnthropicDelta, n) + windowAnthropicEnd
}

// openAIStreamOf is an OpenAI chat stream with include_usage of about size
// bytes.
func openAIStreamOf(size int) string {
	n := max(0, (size-len(windowOpenAIEnd))/len(windowOpenAIChunk))
	return strings.Repeat(windowOpenAIChunk, n) + windowOpenAIEnd
}

// straddling is an Anthropic stream whose message_delta (the output tokens)
// begins just before headSize and ends after it: it lies partly in the head
// and partly in the tail region, and must be read once, whole.
func straddling() string {
	s := windowAnthropicStart
	for len(s)+len(windowAnthropicDelta) < headSize-20 {
		s += windowAnthropicDelta
	}
	// Pad with a comment line (ignored by SSE) to start the event at headSize-20.
	s += ":" + strings.Repeat("x", headSize-20-len(s)-2) + "\n\n"
	return s + windowAnthropicEnd
}

func TestStraddlingStreamStraddles(t *testing.T) {
	s := straddling()
	at := strings.Index(s, "event: message_delta")
	if end := at + strings.Index(s[at:], "\n\n"); at >= headSize || end <= headSize {
		t.Fatalf("message_delta spans [%d, %d), not across %d", at, end, headSize)
	}
}

func TestUsageWindowReadsHeadAndTail(t *testing.T) {
	anthropic := ratelimit.Usage{Input: 900, Output: 50}
	openai := ratelimit.Usage{Input: 40, Output: 60, Total: 100}
	streams := []struct {
		name string
		body string
		want ratelimit.Usage
	}{
		{name: "anthropic short: all in the head", body: anthropicStreamOf(2 << 10), want: anthropic},
		{name: "anthropic filling the head exactly", body: anthropicStreamOf(headSize), want: anthropic},
		{name: "anthropic medium: head and tail contiguous", body: anthropicStreamOf(12 << 10), want: anthropic},
		{name: "anthropic filling the window exactly", body: anthropicStreamOf(headSize + tailSize), want: anthropic},
		{name: "anthropic long: bytes dropped between head and tail", body: anthropicStreamOf(40 << 10), want: anthropic},
		{name: "anthropic usage event straddling the head's end", body: straddling(), want: anthropic},
		{name: "openai short", body: openAIStreamOf(1 << 10), want: openai},
		{name: "openai medium", body: openAIStreamOf(12 << 10), want: openai},
		{name: "openai long", body: openAIStreamOf(100 << 10), want: openai},
	}
	for _, tt := range streams {
		for _, chunk := range []int{1, 7, 100, 4096, headSize, 1 << 20} {
			t.Run(tt.name+"/chunk "+strconv.Itoa(chunk), func(t *testing.T) {
				var w usageWindow
				w.add(nil)
				for rest := tt.body; len(rest) > 0; {
					n := min(chunk, len(rest))
					w.add([]byte(rest[:n]))
					rest = rest[n:]
				}
				checkWindow(t, &w, tt.body)
				got, ok := w.usage()
				if !ok || got != tt.want {
					t.Errorf("usage = %+v, %v; want %+v (%d-byte stream)", got, ok, tt.want, len(tt.body))
				}
			})
		}
	}
}

// checkWindow verifies what w holds of body: all of it, contiguous, while it
// fits; else its first headSize and last tailSize bytes.
func checkWindow(t *testing.T, w *usageWindow, body string) {
	t.Helper()
	if w.seen != int64(len(body)) {
		t.Fatalf("seen %d, want %d", w.seen, len(body))
	}
	if len(body) <= headSize+tailSize {
		if got := w.buf[:w.headN+w.tailN]; !bytes.Equal(got, []byte(body)) {
			t.Fatalf("window holds %d bytes, not the whole %d-byte body", len(got), len(body))
		}
		return
	}
	if !bytes.Equal(w.buf[:w.headN], []byte(body[:headSize])) {
		t.Fatal("head is not the body's first bytes")
	}
	if !bytes.Equal(w.buf[headSize:headSize+w.tailN], []byte(body[len(body)-tailSize:])) {
		t.Fatal("tail is not the body's last bytes")
	}
}

// A recycled window starts empty: nothing of the previous stream is read.
func TestUsageWindowReset(t *testing.T) {
	var w usageWindow
	w.add([]byte(anthropicStreamOf(30 << 10)))
	w.reset()
	w.add([]byte(windowOpenAIEnd))
	got, ok := w.usage()
	if want := (ratelimit.Usage{Input: 40, Output: 60, Total: 100}); !ok || got != want {
		t.Errorf("after reset: %+v, %v; want %+v", got, ok, want)
	}
	w.reset()
	if _, ok := w.usage(); ok {
		t.Error("an empty window reports usage")
	}
}

// Read runs for every chunk of every stream: recording it may not allocate.
func TestUsageWindowAddDoesNotAllocate(t *testing.T) {
	w := new(usageWindow)
	chunks := [][]byte{[]byte(windowAnthropicDelta), make([]byte, 3000), make([]byte, 20<<10)}
	if allocs := testing.AllocsPerRun(1000, func() {
		for _, c := range chunks {
			w.add(c)
		}
	}); allocs != 0 {
		t.Errorf("usageWindow.add: %v allocations per run, want 0", allocs)
	}
}
