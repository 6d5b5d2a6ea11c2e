package proxy

import "github.com/ballast-proxy/ballast/ratelimit"

// Sizes of what a streamed body's usage is read from: its first headSize
// bytes (Anthropic reports input tokens in message_start, the first event)
// and its last tailSize bytes (OpenAI's include_usage chunk, Anthropic's
// message_delta, OpenAI's response.completed).
const (
	headSize = 8 << 10
	tailSize = 8 << 10
)

// usageWindow keeps a streamed body's first headSize bytes and, of the bytes
// after those, the last tailSize: the two never share a byte, so no event is
// read twice. While the body is at most headSize+tailSize long, the window
// holds all of it, contiguous. The zero value is an empty window; add does
// not allocate.
type usageWindow struct {
	buf   [headSize + tailSize]byte
	headN int   // bytes in buf[:headSize]
	tailN int   // bytes in buf[headSize:]
	seen  int64 // bytes added in all
}

// reset empties w without clearing its buffer.
func (w *usageWindow) reset() { w.headN, w.tailN, w.seen = 0, 0, 0 }

// add records the next bytes of the body.
func (w *usageWindow) add(p []byte) {
	w.seen += int64(len(p))
	if w.headN < headSize {
		n := copy(w.buf[w.headN:headSize], p)
		w.headN += n
		p = p[n:]
	}
	if len(p) == 0 {
		return
	}
	tail := w.buf[headSize:]
	if len(p) >= tailSize {
		w.tailN = copy(tail, p[len(p)-tailSize:])
		return
	}
	if over := w.tailN + len(p) - tailSize; over > 0 {
		w.tailN = copy(tail, tail[over:w.tailN])
	}
	w.tailN += copy(tail[w.tailN:], p)
}

// usage reads the body's token usage: from the whole body when the window
// holds it all, else from its head then its tail (the tail's fields
// replacing the head's), the bytes between them unread.
func (w *usageWindow) usage() (ratelimit.Usage, bool) {
	if w.seen <= int64(len(w.buf)) {
		return ratelimit.UsageFromBody(w.buf[:w.headN+w.tailN])
	}
	return ratelimit.UsageFromParts(w.buf[:w.headN], w.buf[headSize:headSize+w.tailN])
}
