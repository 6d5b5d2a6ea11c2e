//go:build !race

// The race detector allocates, so the allocation gates build without it;
// make test runs them in a second, race-free pass.

package supervise

import (
	"errors"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// errNoteFault is a failure's error, made before the gate counts.
var errNoteFault = errors.New("dial tcp: connect: connection refused")

// What the request path calls on every request must not allocate.
func TestHotPathAllocations(t *testing.T) {
	b := NewBoard()
	b.Route("openai").Upstream("api.openai.com:443")
	id := []byte("6f1c2a9e0b3d-k2")
	n := NewNotifier(&chanSender{}, NotifierConfig{MaxPerMinute: 1}, policy.NewFakeClock(t0), nil)
	defer n.Close(t.Context())
	n.Notify(Event{Kind: KindCooldown, Route: "openai"}) // later calls are duplicates
	tests := []struct {
		name string
		fn   func()
	}{
		{"Board.Route lookup", func() { _ = b.Route("openai") }},
		{"Route.Upstream lookup", func() { _ = b.Route("openai").Upstream("api.openai.com:443") }},
		{"Window.Record", func() {
			b.Route("openai").Record(t0, Sample{Latency: 3 * time.Millisecond, Failed: true, Retries: 1})
		}},
		{"Upstream Begin/End and notes", func() {
			u := b.Route("openai").Upstream("api.openai.com:443")
			u.Begin()
			u.End()
			u.NoteBreaker(policy.StateClosed)
			u.NoteCooldown(t0)
		}},
		{"FailureRing.Record", func() {
			b.Failures().Record(&FailureRecord{Time: t0, Route: "openai", Upstream: "api.openai.com:443",
				Status: 502, Class: policy.Transient, Attempts: 3, RequestID: id})
		}},
		{"Upstream.NoteFault", func() {
			b.Route("openai").Upstream("api.openai.com:443").NoteFault(&Fault{Time: t0, Class: policy.Transient,
				Cause: policy.CauseConnect, Err: errNoteFault})
		}},
		{"FailureRing.Record with an error", func() {
			b.Failures().Record(&FailureRecord{Time: t0, Route: "openai", Status: 502, Class: policy.Transient,
				RequestID: id, Err: errNoteFault, Short: policy.ShortageDescriptors})
		}},
		{"Notifier.Notify duplicate", func() { n.Notify(Event{Kind: KindCooldown, Route: "openai"}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a := testing.AllocsPerRun(200, tt.fn); a != 0 {
				t.Errorf("%s allocates %.1f times per call, want 0", tt.name, a)
			}
		})
	}
}

func BenchmarkWindowRecord(b *testing.B) {
	var w Window
	b.ReportAllocs()
	now := t0
	for i := 0; b.Loop(); i++ {
		w.Record(now.Add(time.Duration(i)*time.Millisecond), Sample{Latency: time.Duration(i%5000) * time.Microsecond})
	}
}

func BenchmarkWindowRecordParallel(b *testing.B) {
	var w Window
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Record(t0, Sample{Latency: 2 * time.Millisecond})
		}
	})
}

func BenchmarkBoardLookup(b *testing.B) {
	bd := NewBoard()
	for _, n := range []string{"openai", "anthropic", "tools", "search", "db"} {
		bd.Route(n).Upstream(n + ":443")
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = bd.Route("search").Upstream("search:443")
	}
}

func BenchmarkFailureRecord(b *testing.B) {
	var r FailureRing
	id := []byte("6f1c2a9e0b3d-k2")
	b.ReportAllocs()
	for b.Loop() {
		r.Record(&FailureRecord{Time: t0, Route: "openai", Status: 502, Class: policy.Transient, RequestID: id})
	}
}

func BenchmarkWindowStats(b *testing.B) {
	var w Window
	for i := range 6000 {
		w.Record(t0.Add(time.Duration(i)*10*time.Millisecond), Sample{Latency: time.Duration(i) * time.Microsecond})
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = w.Stats(t0.Add(time.Minute))
	}
}
