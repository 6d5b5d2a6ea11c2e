package supervise

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

func TestBoardKeepsStateByName(t *testing.T) {
	b := NewBoard()
	r := b.Route("openai")
	if b.Route("openai") != r || r.Name() != "openai" {
		t.Fatal("the same name must give the same route")
	}
	if b.Route("anthropic") == r {
		t.Fatal("another name must give another route")
	}
	u := r.Upstream("api.openai.com")
	if r.Upstream("api.openai.com") != u || u.Name() != "api.openai.com" {
		t.Fatal("the same upstream name must give the same upstream")
	}
	if r.Upstream("backup:443") == u {
		t.Fatal("another upstream name must give another upstream")
	}
}

func TestBoardConcurrentCreation(t *testing.T) {
	b := NewBoard()
	var wg sync.WaitGroup
	got := make([]*Upstream, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				b.Route(fmt.Sprint("r", j)).Upstream(fmt.Sprint("u", j))
			}
			got[i] = b.Route("r3").Upstream("u3")
		}()
	}
	wg.Wait()
	for _, u := range got {
		if u != got[0] {
			t.Fatal("concurrent creation gave two upstreams for one name")
		}
	}
	if n := len(*b.routes.Load()); n != 10 {
		t.Errorf("%d routes, want 10", n)
	}
}

func TestUpstreamInFlight(t *testing.T) {
	var u Upstream
	u.Begin()
	u.Begin()
	u.End()
	if u.InFlight() != 1 {
		t.Errorf("in flight %d, want 1", u.InFlight())
	}
}

func TestNoteBreaker(t *testing.T) {
	var u Upstream
	steps := []struct {
		state  policy.BreakerState
		opened bool
	}{
		{policy.StateClosed, false},
		{policy.StateOpen, true},
		{policy.StateOpen, false}, // still open: already alerted
		{policy.StateHalfOpen, false},
		{policy.StateOpen, true}, // the probe failed: opened again
		{policy.StateClosed, false},
	}
	for i, s := range steps {
		if got := u.NoteBreaker(s.state); got != s.opened {
			t.Errorf("step %d (%s): opened = %v, want %v", i, s.state, got, s.opened)
		}
	}
}

func TestNoteCooldown(t *testing.T) {
	var u Upstream
	if !u.NoteCooldown(t0.Add(time.Minute)) {
		t.Error("a first cool-down is new")
	}
	if u.NoteCooldown(t0.Add(time.Minute)) || u.NoteCooldown(t0.Add(30*time.Second)) {
		t.Error("the same or an earlier end is not new")
	}
	if !u.NoteCooldown(t0.Add(2 * time.Minute)) {
		t.Error("a later end is new")
	}
}

func TestFailureRing(t *testing.T) {
	var r FailureRing
	if got := r.Snapshot(nil); len(got) != 0 {
		t.Fatalf("empty ring gave %d", len(got))
	}
	id := []byte("req-0")
	for i := range FailureCapacity + 5 {
		id[4] = byte('a' + i)
		r.Record(&FailureRecord{Time: t0.Add(time.Duration(i) * time.Second), Route: "r", Upstream: "u:1",
			Status: 502, Class: policy.Transient, Cause: policy.CauseConnect, Attempts: 3, RequestID: id})
	}
	id[4] = '!' // the ring copied the id: changing the caller's buffer changes nothing
	got := r.Snapshot(nil)
	if len(got) != FailureCapacity {
		t.Fatalf("kept %d, want %d", len(got), FailureCapacity)
	}
	newest, oldest := got[0], got[len(got)-1]
	if !newest.Time.Equal(t0.Add(24*time.Second)) || !oldest.Time.Equal(t0.Add(5*time.Second)) {
		t.Errorf("newest %v oldest %v: want newest first, the 5 oldest dropped", newest.Time, oldest.Time)
	}
	if newest.RequestID != "req-"+string(rune('a'+24)) {
		t.Errorf("request id %q", newest.RequestID)
	}
	want := Failure{Time: newest.Time, Route: "r", Upstream: "u:1", Status: 502, Class: "transient",
		Cause: "connect-failure", Reason: "transient", Attempts: 3, RequestID: newest.RequestID}
	if newest != want {
		t.Errorf("failure %+v, want %+v", newest, want)
	}

	r.Record(&FailureRecord{Route: "r", Class: policy.BudgetExhausted, Reason: "budget_exhausted", RequestID: make([]byte, 300)})
	if f := r.Snapshot(nil)[0]; f.Reason != "budget_exhausted" || f.Cause != "" || len(f.RequestID) != maxRequestID {
		t.Errorf("failure %+v: want the given reason, no cause, the id cut to %d bytes", f, maxRequestID)
	}
}

// A reload's removals leave the board; what stays keeps its windows.
func TestBoardRetain(t *testing.T) {
	b := NewBoard()
	kept := b.Route("openai")
	primary := kept.Upstream("api.openai.com")
	kept.Upstream("old-fallback:443")
	b.Route("generated-route-17").Upstream("tool:80")

	b.Retain(map[string][]string{"openai": {"api.openai.com"}, "new": {"x:1"}})

	if b.Route("openai") != kept || kept.Upstream("api.openai.com") != primary {
		t.Fatal("a kept route or upstream was replaced: its windows would be lost")
	}
	if n := len(*b.routes.Load()); n != 1 { // "new" has no state until it is used
		t.Fatalf("%d routes on the board after Retain, want 1", n)
	}
	if got := len(*kept.ups.Load()); got != 1 {
		t.Fatalf("%d upstreams kept for the route, want 1", got)
	}
	if _, ok := (*b.routes.Load())["generated-route-17"]; ok {
		t.Fatal("a removed route stayed on the board")
	}
}
