package cache

import (
	"testing"

	"github.com/valyala/fasthttp"
)

func TestEntryRoundTrip(t *testing.T) {
	var up fasthttp.Response
	up.SetStatusCode(203)
	up.Header.SetContentType("application/json")
	up.Header.Set("Content-Encoding", "gzip")
	up.Header.Set("X-Upstream", "a")
	up.Header.Add("X-Multi", "1")
	up.Header.Add("X-Multi", "2")
	for _, skipped := range []string{"Connection", "Keep-Alive", "Age", "Date", "X-Ballast-Attempts", "X-Request-Id", "Trailer-Not", "Te"} {
		up.Header.Set(skipped, "skip")
	}
	up.SetBodyString(`{"ok":true}`)

	e := NewEntry(&up, t0)
	up.SetBodyString("mutated") // the entry must own a copy

	var out fasthttp.Response
	e.WriteResponse(&out)
	if out.StatusCode() != 203 || string(out.Body()) != `{"ok":true}` {
		t.Fatalf("status %d body %q", out.StatusCode(), out.Body())
	}
	checks := []struct{ name, want string }{
		{"Content-Type", "application/json"},
		{"Content-Encoding", "gzip"},
		{"X-Upstream", "a"},
		{"Age", ""},
		{"Date", ""},
		{"X-Ballast-Attempts", ""},
		{"X-Request-Id", ""},
		{"Keep-Alive", ""},
		{"Te", ""},
		{"Trailer-Not", "skip"},
	}
	for _, c := range checks {
		if got := string(out.Header.Peek(c.name)); got != c.want {
			t.Errorf("%s = %q, want %q", c.name, got, c.want)
		}
	}
	if got := out.Header.PeekAll("X-Multi"); len(got) != 2 || string(got[0]) != "1" || string(got[1]) != "2" {
		t.Errorf("X-Multi = %q, want both values in order", got)
	}
	if e.Size() != int64(len(e.Header)+len(e.Body))+entryOverhead {
		t.Errorf("Size() = %d", e.Size())
	}
}

func TestEntryHeadersStopsEarly(t *testing.T) {
	e := &Entry{Header: []byte("A: 1\r\nB: 2\r\nC: 3\r\n")}
	var names []string
	for name := range e.Headers {
		names = append(names, string(name))
		if len(names) == 2 {
			break
		}
	}
	if len(names) != 2 || names[0] != "A" || names[1] != "B" {
		t.Fatalf("names = %v", names)
	}
}
