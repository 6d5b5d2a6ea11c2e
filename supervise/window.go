package supervise

import (
	"sync"
	"time"
)

// WindowSeconds is the span of a Window: rates, ratios and quantiles cover
// the last minute, and a series has one point per second of it.
const WindowSeconds = 60

// Sample is one observation recorded into a Window.
type Sample struct {
	// Latency is how long the request (or attempt) took.
	Latency time.Duration
	// Failed marks an outcome that counts against health; CountsAsFailure
	// says which classes do.
	Failed bool
	// Retries is how many retries the observation includes (attempts
	// after the first). 0 for a single attempt.
	Retries int
}

type bucket struct {
	sec      int64 // the unix second this bucket counts; stale when older than the window
	requests uint32
	failures uint32
	retries  uint32
	lat      histogram
}

// Window is a rolling one-minute record of requests: a fixed ring of
// per-second buckets, each with counts and a latency histogram. Record is
// allocation-free and holds a short mutex; reads (Stats, Series) take the
// same mutex and cost O(WindowSeconds). The zero value is ready.
type Window struct {
	mu      sync.Mutex
	first   int64 // unix second of the first Record, 0 before it
	total   uint64
	buckets [WindowSeconds]bucket
}

// Record adds s to the second that contains now. Observations older than
// the window (a clock that went back) are dropped.
func (w *Window) Record(now time.Time, s Sample) {
	sec := now.Unix()
	w.mu.Lock()
	b := &w.buckets[slot(sec)]
	if b.sec != sec {
		if b.sec > sec {
			w.mu.Unlock()
			return
		}
		*b = bucket{sec: sec}
	}
	if w.first == 0 {
		w.first = sec
	}
	w.total++
	b.requests++
	if s.Failed {
		b.failures++
	}
	if s.Retries > 0 {
		b.retries += uint32(s.Retries)
	}
	b.lat[bucketOf(s.Latency)]++
	w.mu.Unlock()
}

// Fail turns one request recorded as a success in the second that
// contains at into a failure: an answer found to have failed after it was
// recorded (a stream the upstream cut after its headers). Once that second
// has left the window there is nothing to change.
func (w *Window) Fail(at time.Time) {
	sec := at.Unix()
	w.mu.Lock()
	if b := &w.buckets[slot(sec)]; b.sec == sec && b.failures < b.requests {
		b.failures++
	}
	w.mu.Unlock()
}

func slot(sec int64) int {
	i := int(sec % WindowSeconds)
	if i < 0 {
		i += WindowSeconds
	}
	return i
}

// live reports whether a bucket's second lies in the window ending at now.
func live(bsec, now int64) bool { return bsec > now-WindowSeconds && bsec <= now }

// Stats summarises the window ending at now. The rate divides by the
// window's span, or by the time since the first Record when that is
// shorter, so a fresh process does not under-report. Ratios and quantiles
// are nil when the window holds no request.
func (w *Window) Stats(now time.Time) Stats {
	sec := now.Unix()
	var h histogram
	var st Stats
	w.mu.Lock()
	first, total := w.first, w.total
	for i := range w.buckets {
		b := &w.buckets[i]
		if b.requests == 0 || !live(b.sec, sec) {
			continue
		}
		st.Requests += uint64(b.requests)
		st.Failures += uint64(b.failures)
		st.Retries += uint64(b.retries)
		h.add(&b.lat)
	}
	w.mu.Unlock()
	st.TotalRequests = total
	if st.Requests == 0 {
		return st
	}
	span := int64(WindowSeconds)
	if first > 0 && sec-first+1 < span {
		span = max(sec-first+1, 1)
	}
	st.RatePerSecond = round3(float64(st.Requests) / float64(span))
	ratio := round3(float64(st.Requests-st.Failures) / float64(st.Requests))
	st.SuccessRatio = &ratio
	if d, ok := h.quantile(0.5); ok {
		ms := durationMS(d)
		st.P50MS = &ms
	}
	if d, ok := h.quantile(0.99); ok {
		ms := durationMS(d)
		st.P99MS = &ms
	}
	return st
}

// Series returns one point per second of the window ending at now, oldest
// first: requests and failures in that second. The last point is the
// current, partial second.
func (w *Window) Series(now time.Time) Series {
	sec := now.Unix()
	s := Series{Requests: make([]uint32, WindowSeconds), Failures: make([]uint32, WindowSeconds)}
	w.mu.Lock()
	for i := range WindowSeconds {
		at := sec - WindowSeconds + 1 + int64(i)
		b := &w.buckets[slot(at)]
		if b.sec == at {
			s.Requests[i], s.Failures[i] = b.requests, b.failures
		}
	}
	w.mu.Unlock()
	return s
}

func durationMS(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

// round3 keeps three decimals, enough for a status page and stable JSON.
func round3(f float64) float64 {
	if f < 0 {
		return -round3(-f)
	}
	return float64(int64(f*1000+0.5)) / 1000
}
