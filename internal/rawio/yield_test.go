package rawio_test

import (
	"io"
	"sync/atomic"
	"testing"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// The first Read after a Write yields before reading; a Read after a
// Read does not, and the data arrives whole either way.
func TestReadYieldsOnlyAfterAWrite(t *testing.T) {
	c, s := pair(t)
	var yields atomic.Int64
	t.Cleanup(rawio.SetTestHookYield(func() { yields.Add(1) }))
	read := func(want string) {
		t.Helper()
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
			t.Fatalf("Read = %q, %v; want %q", buf, err, want)
		}
	}
	steps := []struct {
		name      string
		writes    []string // written by c first
		peer      string   // then sent by the peer, and read by c
		wantYield int64
	}{
		{name: "a first read", peer: "hello", wantYield: 0},
		{name: "a read after a read", peer: "again", wantYield: 0},
		{name: "a read after a write", writes: []string{"request"}, peer: "answer", wantYield: 1},
		{name: "only the first read after it", peer: "more", wantYield: 0},
		{name: "two writes, one yield", writes: []string{"a", "b"}, peer: "c", wantYield: 1},
	}
	for _, st := range steps {
		before := yields.Load()
		var sent string
		for _, w := range st.writes {
			if _, err := c.Write([]byte(w)); err != nil {
				t.Fatal(err)
			}
			sent += w
		}
		got := make([]byte, len(sent))
		if _, err := io.ReadFull(s, got); err != nil || string(got) != sent {
			t.Fatalf("%s: the peer got %q, %v", st.name, got, err)
		}
		if _, err := s.Write([]byte(st.peer)); err != nil {
			t.Fatal(err)
		}
		read(st.peer)
		if got := yields.Load() - before; got != st.wantYield {
			t.Errorf("%s: %d yields, want %d", st.name, got, st.wantYield)
		}
	}
}
