package supervise

import "time"

// latencyBounds are the upper bounds of the latency histogram's buckets,
// roughly 1-2-3-5 steps from 50µs to 2m. Anything slower falls into one
// overflow bucket. The relative error of a quantile is bounded by the width
// of the bucket it falls in; values are interpolated linearly inside it.
var latencyBounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 200 * time.Microsecond, 300 * time.Microsecond,
	500 * time.Microsecond, 750 * time.Microsecond,
	time.Millisecond, 1500 * time.Microsecond, 2 * time.Millisecond, 3 * time.Millisecond,
	5 * time.Millisecond, 7500 * time.Microsecond,
	10 * time.Millisecond, 15 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond,
	50 * time.Millisecond, 75 * time.Millisecond,
	100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond,
	500 * time.Millisecond, 750 * time.Millisecond,
	time.Second, 1500 * time.Millisecond, 2 * time.Second, 3 * time.Second,
	5 * time.Second, 7500 * time.Millisecond,
	10 * time.Second, 15 * time.Second, 20 * time.Second, 30 * time.Second,
	60 * time.Second, 120 * time.Second,
}

// numLatencyBuckets counts the bounded buckets plus the overflow bucket.
const numLatencyBuckets = len(latencyBounds) + 1

// histogram counts latencies into the fixed buckets. The zero value is
// empty and ready.
type histogram [numLatencyBuckets]uint32

// bucketOf returns the index of the bucket d falls in: the first whose
// upper bound is ≥ d, or the overflow bucket.
func bucketOf(d time.Duration) int {
	lo, hi := 0, len(latencyBounds)
	for lo < hi {
		mid := (lo + hi) / 2
		if latencyBounds[mid] < d {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// add merges o into h.
func (h *histogram) add(o *histogram) {
	for i := range h {
		h[i] += o[i]
	}
}

// quantile returns the q-quantile (0 < q ≤ 1) of the counted latencies,
// interpolated linearly inside its bucket, and false when h is empty. A
// quantile in the overflow bucket reads as the largest bound.
func (h *histogram) quantile(q float64) (time.Duration, bool) {
	var total uint64
	for _, c := range h {
		total += uint64(c)
	}
	if total == 0 {
		return 0, false
	}
	if q <= 0 {
		q = 0
	}
	if q > 1 {
		q = 1
	}
	rank := q * float64(total) // the rank-th observation, 1-based, fractional
	var seen uint64
	for i, c := range h {
		if c == 0 {
			continue
		}
		if float64(seen+uint64(c)) >= rank {
			if i == len(latencyBounds) {
				return latencyBounds[len(latencyBounds)-1], true
			}
			lower := time.Duration(0)
			if i > 0 {
				lower = latencyBounds[i-1]
			}
			upper := latencyBounds[i]
			frac := (rank - float64(seen)) / float64(c)
			if frac < 0 {
				frac = 0
			}
			return lower + time.Duration(frac*float64(upper-lower)), true
		}
		seen += uint64(c)
	}
	return latencyBounds[len(latencyBounds)-1], true
}
