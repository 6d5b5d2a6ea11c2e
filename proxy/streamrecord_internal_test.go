package proxy

import (
	"bytes"
	"testing"

	"github.com/valyala/bytebufferpool"
)

// TestStreamRecordNeverHoldsMoreThanItsRoom: a keyed stream's record grows
// its buffer as append would, but never past what it may store, so a
// stream just under state.max_response_bytes does not hold a buffer of
// twice that; and one chunk past it still drops the record.
func TestStreamRecordNeverHoldsMoreThanItsRoom(t *testing.T) {
	const room = 10_000
	k := &streamRecord{body: &bytebufferpool.ByteBuffer{}, room: room}
	chunk := bytes.Repeat([]byte("x"), 999)
	for range 10 {
		k.add(chunk)
	}
	if k.body == nil || len(k.body.B) != 9990 {
		t.Fatalf("recorded %v bytes, want 9990", k.body)
	}
	if c := cap(k.body.B); c > room {
		t.Errorf("buffer capacity %d for a record of at most %d bytes", c, room)
	}
	k.add(chunk)
	if k.body != nil {
		t.Error("a chunk past the room kept the record")
	}

	for _, tc := range []struct {
		len, cap, n int
		limit       int64
		want        int
	}{
		{len: 0, cap: 0, n: 10, limit: 100, want: 10},
		{len: 10, cap: 10, n: 1, limit: 100, want: 20},
		{len: 60, cap: 60, n: 1, limit: 100, want: 100},
		{len: 100, cap: 100, n: 5, limit: 100, want: 105}, // n needs more: given
		{len: 5, cap: 50, n: 5, limit: 10, want: 50},      // fits: untouched
	} {
		b := make([]byte, tc.len, tc.cap)
		got := growWithin(b, tc.n, tc.limit)
		if cap(got) != tc.want || len(got) != tc.len {
			t.Errorf("growWithin(len %d, cap %d, %d, %d): len %d cap %d, want len %d cap %d",
				tc.len, tc.cap, tc.n, tc.limit, len(got), cap(got), tc.len, tc.want)
		}
	}
}
