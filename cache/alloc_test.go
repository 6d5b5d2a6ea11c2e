//go:build !race

// The race detector allocates, so the allocation gates build without it;
// make test runs them in a second, race-free pass.

package cache

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestHotPathAllocs pins the per-request cache work at zero allocations:
// building a key (piecewise and from a request), a lookup hit, the
// Cache-Status and Age values, and storing an answer the cache already
// holds (a refresh).
func TestHotPathAllocs(t *testing.T) {
	req := newRequest("POST", "http://tool.local/v1/search?z=1&b=2&a=3", `{"query":"ballast","limit":10}`,
		"Authorization", "Bearer sk-tenant", "Accept", "application/json")
	defer fasthttp.ReleaseRequest(req)
	opts := &KeyOptions{Vary: []string{"Accept"}}
	kb := NewKeyBuilder()
	kb.Request(req, req.Body(), opts) // grow buffers once

	c := mustNew(t, Config{TTL: time.Minute, Stale: time.Hour})
	key := kb.Request(req, req.Body(), opts)
	c.Set(key, &Entry{Status: 200, Body: []byte(`{"ok":true}`), StoredAt: t0})
	now := t0.Add(time.Second)
	buf := make([]byte, 0, 128)

	same := new(fasthttp.Response)
	same.Header.SetContentType("application/json")
	same.Header.Set("X-Tool", "a")
	same.SetBodyString(`{"ok":true}`)
	refreshKey := k(7)
	c.Set(refreshKey, NewEntry(same, t0))
	received := t0

	lifetimeHeader := []byte("Content-Type: application/json\r\nCache-Control: public, max-age=60\r\nExpires: Thu, 01 Jan 2037 00:00:00 GMT\r\n")
	var reqNoCache fasthttp.RequestHeader
	reqNoCache.Set("Cache-Control", "max-age=10, no-cache")

	// Pieces live on the heap already in real use (fasthttp buffers).
	method, path, query, body := []byte("GET"), []byte("/v1/items"), []byte("b=2&a=1"), []byte(`{"q":1}`)
	accept, acceptV, auth, authV := []byte("Accept"), []byte("*/*"), []byte("Authorization"), []byte("Bearer x")

	tests := []struct {
		name string
		fn   func()
	}{
		{name: "KeyBuilder.Request", fn: func() { _ = kb.Request(req, req.Body(), opts) }},
		{name: "KeyBuilder pieces", fn: func() {
			kb.Reset()
			kb.Method(method)
			kb.Path(path)
			kb.Query(query)
			kb.Body(body)
			kb.Vary(accept, acceptV)
			kb.Identity(auth, authV)
			_ = kb.Sum()
		}},
		{name: "Cache.Get hit", fn: func() {
			if _, ok := c.Get(key, now); !ok {
				t.Fatal("miss")
			}
		}},
		{name: "Status.Append and AppendAge", fn: func() {
			l, _ := c.Get(key, now)
			buf = Hit(l).Append(buf[:0], "ballast")
			buf = AppendAge(buf[:0], l.Age)
		}},
		{name: "RequestNoCache", fn: func() { _ = RequestNoCache(&reqNoCache) }},
		{name: "Lifetime", fn: func() {
			if _, ok := Lifetime(lifetimeHeader, now); !ok {
				t.Fatal("no lifetime read")
			}
		}},
		{name: "Cache.Refresh with the same answer", fn: func() {
			received = received.Add(time.Millisecond)
			if _, ok := c.Refresh(refreshKey, same, received); !ok {
				t.Fatal("refresh refused")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, tt.fn); n != 0 {
				t.Errorf("%s allocates %.1f times per op, want 0", tt.name, n)
			}
		})
	}
}
