package supervise

import (
	"math"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestBucketOf(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want int
	}{
		{"zero goes to the first bucket", 0, 0},
		{"exactly a bound stays in it", 50 * time.Microsecond, 0},
		{"just above a bound moves up", 51 * time.Microsecond, 1},
		{"one millisecond", time.Millisecond, 6},
		{"the largest bound", 120 * time.Second, len(latencyBounds) - 1},
		{"beyond every bound overflows", time.Hour, len(latencyBounds)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bucketOf(tt.d); got != tt.want {
				t.Errorf("bucketOf(%v) = %d, want %d", tt.d, got, tt.want)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	fill := func(ds ...time.Duration) *histogram {
		var h histogram
		for _, d := range ds {
			h[bucketOf(d)]++
		}
		return &h
	}
	many := func(n int, d time.Duration) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = d
		}
		return out
	}
	tests := []struct {
		name   string
		h      *histogram
		q      float64
		lo, hi time.Duration // the answer must lie in [lo, hi]
		empty  bool
	}{
		{name: "empty has no quantile", h: fill(), q: 0.5, empty: true},
		{name: "one value lands in its bucket", h: fill(12 * time.Millisecond), q: 0.5, lo: 10 * time.Millisecond, hi: 15 * time.Millisecond},
		{name: "median of a bimodal set follows the majority",
			h: fill(append(many(90, 2*time.Millisecond), many(10, 900*time.Millisecond)...)...), q: 0.5,
			lo: 1500 * time.Microsecond, hi: 2 * time.Millisecond},
		{name: "p99 of the same set sees the slow tail",
			h: fill(append(many(90, 2*time.Millisecond), many(10, 900*time.Millisecond)...)...), q: 0.99,
			lo: 750 * time.Millisecond, hi: time.Second},
		{name: "overflow reads as the largest bound", h: fill(10 * time.Minute), q: 0.99, lo: 120 * time.Second, hi: 120 * time.Second},
		{name: "q above 1 is clamped", h: fill(3 * time.Millisecond), q: 7, lo: 2 * time.Millisecond, hi: 3 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.h.quantile(tt.q)
			if ok == tt.empty {
				t.Fatalf("ok = %v, want %v", ok, !tt.empty)
			}
			if !tt.empty && (got < tt.lo || got > tt.hi) {
				t.Errorf("quantile(%v) = %v, want within [%v, %v]", tt.q, got, tt.lo, tt.hi)
			}
		})
	}
}

func TestWindowStats(t *testing.T) {
	tests := []struct {
		name                     string
		record                   func(w *Window)
		at                       time.Time
		requests, fails, retries uint64
		rate                     float64
		success                  float64 // NaN: want nil
	}{
		{
			name:    "empty window has no ratio",
			record:  func(w *Window) {},
			at:      t0,
			success: math.NaN(),
		},
		{
			name: "a fresh window divides by the time since its first record",
			record: func(w *Window) {
				for i := range 10 {
					w.Record(t0.Add(time.Duration(i)*time.Second), Sample{Latency: time.Millisecond, Failed: i < 2, Retries: i % 2})
				}
			},
			at:       t0.Add(9 * time.Second),
			requests: 10, fails: 2, retries: 5, rate: 1, success: 0.8,
		},
		{
			name: "a full minute divides by sixty",
			record: func(w *Window) {
				for i := range 120 {
					w.Record(t0.Add(time.Duration(i)*time.Second), Sample{Latency: time.Millisecond})
				}
			},
			at:       t0.Add(119 * time.Second),
			requests: 60, rate: 1, success: 1,
		},
		{
			name: "requests older than the window no longer count",
			record: func(w *Window) {
				w.Record(t0, Sample{Failed: true})
				w.Record(t0.Add(30*time.Second), Sample{})
			},
			at:       t0.Add(75 * time.Second),
			requests: 1, rate: 1.0 / 60, success: 1,
		},
		{
			name: "a record from before the bucket's second is dropped",
			record: func(w *Window) {
				w.Record(t0.Add(60*time.Second), Sample{})
				w.Record(t0, Sample{Failed: true}) // same slot, a minute older
			},
			at:       t0.Add(60 * time.Second),
			requests: 1, rate: 1, success: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w Window
			tt.record(&w)
			st := w.Stats(tt.at)
			if st.Requests != tt.requests || st.Failures != tt.fails || st.Retries != tt.retries {
				t.Errorf("counts = %d/%d/%d, want %d/%d/%d", st.Requests, st.Failures, st.Retries, tt.requests, tt.fails, tt.retries)
			}
			if math.Abs(st.RatePerSecond-tt.rate) > 0.001 {
				t.Errorf("rate = %v, want %v", st.RatePerSecond, tt.rate)
			}
			switch {
			case math.IsNaN(tt.success):
				if st.SuccessRatio != nil || st.P50MS != nil || st.P99MS != nil {
					t.Errorf("an empty window must report nil ratio and quantiles: %+v", st)
				}
			case st.SuccessRatio == nil || math.Abs(*st.SuccessRatio-tt.success) > 0.001:
				t.Errorf("success = %v, want %v", st.SuccessRatio, tt.success)
			}
		})
	}
}

func TestWindowLatencyQuantiles(t *testing.T) {
	var w Window
	for i := range 100 {
		d := 4 * time.Millisecond
		if i >= 98 {
			d = 2 * time.Second
		}
		w.Record(t0, Sample{Latency: d})
	}
	st := w.Stats(t0)
	if st.P50MS == nil || *st.P50MS < 3 || *st.P50MS > 5 {
		t.Errorf("p50 = %v ms, want about 4", st.P50MS)
	}
	if st.P99MS == nil || *st.P99MS < 1500 || *st.P99MS > 2000 {
		t.Errorf("p99 = %v ms, want in the 2s bucket", st.P99MS)
	}
	if st.TotalRequests != 100 {
		t.Errorf("total = %d", st.TotalRequests)
	}
}

func TestWindowSeries(t *testing.T) {
	var w Window
	w.Record(t0, Sample{})
	w.Record(t0, Sample{Failed: true})
	w.Record(t0.Add(59*time.Second), Sample{})
	w.Record(t0.Add(-time.Second), Sample{}) // falls out at t0+59s
	s := w.Series(t0.Add(59 * time.Second))
	if len(s.Requests) != WindowSeconds || len(s.Failures) != WindowSeconds {
		t.Fatalf("series lengths %d/%d", len(s.Requests), len(s.Failures))
	}
	if s.Requests[0] != 2 || s.Failures[0] != 1 {
		t.Errorf("oldest point = %d/%d, want 2/1", s.Requests[0], s.Failures[0])
	}
	if s.Requests[59] != 1 || s.Failures[59] != 0 {
		t.Errorf("newest point = %d/%d, want 1/0", s.Requests[59], s.Failures[59])
	}
	var sum uint32
	for _, v := range s.Requests {
		sum += v
	}
	if sum != 3 {
		t.Errorf("series holds %d requests, want 3 (the one from before the window is gone)", sum)
	}
}

func TestRouteHealth(t *testing.T) {
	ratio := func(f float64) *float64 { return &f }
	up := func(breaker string, cool float64) UpstreamStatus {
		return UpstreamStatus{Breaker: breaker, CooldownRemainingS: cool}
	}
	tests := []struct {
		name string
		r    RouteStatus
		want Health
	}{
		{"no traffic is idle", RouteStatus{Upstreams: []UpstreamStatus{up("closed", 0)}}, HealthIdle},
		{"all good", RouteStatus{Stats: Stats{Requests: 10, SuccessRatio: ratio(1)}, Upstreams: []UpstreamStatus{up("closed", 0)}}, HealthOK},
		{"some failures", RouteStatus{Stats: Stats{Requests: 10, SuccessRatio: ratio(0.9)}, Upstreams: []UpstreamStatus{up("closed", 0)}}, HealthDegraded},
		{"mostly failing", RouteStatus{Stats: Stats{Requests: 10, SuccessRatio: ratio(0.2)}, Upstreams: []UpstreamStatus{up("closed", 0)}}, HealthFailing},
		{"one breaker open of two", RouteStatus{Upstreams: []UpstreamStatus{up("open", 0), up("closed", 0)}}, HealthDegraded},
		{"every breaker open", RouteStatus{Upstreams: []UpstreamStatus{up("open", 0), up("open", 0)}}, HealthFailing},
		{"cooling down", RouteStatus{Upstreams: []UpstreamStatus{up("disabled", 12)}}, HealthDegraded},
		{"half open", RouteStatus{Upstreams: []UpstreamStatus{up("half_open", 0)}}, HealthDegraded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RouteHealth(&tt.r); got != tt.want {
				t.Errorf("RouteHealth = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCountsAsFailure(t *testing.T) {
	for c := policy.OK; c <= policy.Canceled; c++ {
		want := c != policy.OK && c != policy.CallerFault && c != policy.Canceled
		if got := CountsAsFailure(c); got != want {
			t.Errorf("CountsAsFailure(%s) = %v, want %v", c, got, want)
		}
	}
}

func TestNewCacheStatus(t *testing.T) {
	if c := NewCacheStatus(0, 0); c.HitRatio != nil {
		t.Errorf("no lookups must have no ratio, got %v", *c.HitRatio)
	}
	if c := NewCacheStatus(3, 1); c.HitRatio == nil || *c.HitRatio != 0.75 {
		t.Errorf("3 hits 1 miss: %+v", c)
	}
}
