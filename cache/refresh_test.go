package cache

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// answer builds an upstream response: status, body and header pairs.
func answer(status int, body string, headers ...string) *fasthttp.Response {
	resp := new(fasthttp.Response)
	resp.SetStatusCode(status)
	resp.Header.SetContentType("application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		resp.Header.Add(headers[i], headers[i+1])
	}
	resp.SetBodyString(body)
	return resp
}

func TestRefresh(t *testing.T) {
	stored := answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2", "Date", "then")
	tests := []struct {
		name  string
		resp  *fasthttp.Response
		after time.Duration // since the entry was stored
		want  bool
	}{
		{name: "the same answer", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2", "Date", "then"), after: time.Minute, want: true},
		{name: "only unstored headers differ", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2", "Date", "now", "X-Request-Id", "r2", "Age", "3"), after: time.Minute, want: true},
		{name: "another body", resp: answer(200, `{"ok":false}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2"), after: time.Minute},
		{name: "another status", resp: answer(203, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2"), after: time.Minute},
		{name: "another header value", resp: answer(200, `{"ok":true}`, "X-Tool", "b", "X-Multi", "1", "X-Multi", "2"), after: time.Minute},
		{name: "a header missing", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1"), after: time.Minute},
		{name: "a header more", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2", "X-New", "1"), after: time.Minute},
		{name: "headers in another order", resp: answer(200, `{"ok":true}`, "X-Multi", "1", "X-Multi", "2", "X-Tool", "a"), after: time.Minute},
		{name: "at the same instant", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2"), after: 0},
		{name: "past ttl+stale", resp: answer(200, `{"ok":true}`, "X-Tool", "a", "X-Multi", "1", "X-Multi", "2"), after: 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, Config{TTL: time.Minute, Stale: time.Hour})
			e := NewEntry(stored, t0)
			c.Set(k(1), e)
			now := t0.Add(tt.after)
			got, ok := c.Refresh(k(1), tt.resp, now)
			if ok != tt.want {
				t.Fatalf("Refresh = %v, want %v", ok, tt.want)
			}
			if !ok {
				if got != nil || !e.Received().Equal(t0) {
					t.Errorf("a refused Refresh returned %v and moved Received to %v", got, e.Received())
				}
				return
			}
			if got != e || !e.Received().Equal(now) || !e.StoredAt.Equal(t0) {
				t.Errorf("refreshed entry %p (want %p): Received %v StoredAt %v", got, e, e.Received(), e.StoredAt)
			}
			l, hit := c.Get(k(1), now.Add(10*time.Second))
			if !hit || l.Age != 10*time.Second || !l.Fresh {
				t.Errorf("after the refresh: hit %v, age %v, fresh %v; want age 10s, fresh", hit, l.Age, l.Fresh)
			}
		})
	}
}

func TestRefreshAbsentKey(t *testing.T) {
	c := mustNew(t, Config{TTL: time.Minute})
	if e, ok := c.Refresh(k(1), answer(200, "{}"), t0); ok || e != nil {
		t.Errorf("Refresh of an absent key = %v, %v", e, ok)
	}
	if c.Stats().Entries != 0 {
		t.Error("Refresh stored an entry")
	}
}

// A refresh marks the entry recently used, as a store would.
func TestRefreshMarksRecentlyUsed(t *testing.T) {
	c := mustNew(t, Config{MaxEntries: 2, TTL: time.Hour})
	same := answer(200, "{}")
	c.Set(k(1), NewEntry(same, t0))
	c.Set(k(2), NewEntry(same, t0))
	if _, ok := c.Refresh(k(1), same, t0.Add(time.Second)); !ok {
		t.Fatal("refresh refused")
	}
	c.Set(k(3), NewEntry(same, t0.Add(2*time.Second))) // evicts the least recently used: 2
	if _, ok := c.Get(k(1), t0.Add(3*time.Second)); !ok {
		t.Error("the refreshed entry was evicted")
	}
	if _, ok := c.Get(k(2), t0.Add(3*time.Second)); ok {
		t.Error("entry 2 should have been evicted")
	}
}
