package bench

import (
	"fmt"
	"slices"
)

// medianTarget summarises one target's rounds: the median of each figure
// (CPU, throughput, every latency percentile), taken separately, the
// requests and errors of all rounds added up, and the highest peak RSS.
// The ratios against direct are left for compare, over the medians.
func medianTarget(runs []OverheadTarget) OverheadTarget {
	m := OverheadTarget{Name: runs[0].Name}
	m.CPUPer1k = medianOf(runs, func(t OverheadTarget) float64 { return t.CPUPer1k })
	m.UpstreamCPUPer1k = medianOf(runs, func(t OverheadTarget) float64 { return t.UpstreamCPUPer1k })
	for _, t := range runs {
		m.PeakRSS = max(m.PeakRSS, t.PeakRSS)
	}
	opens := make([]LoadResult, len(runs))
	var sats []LoadResult
	for i, t := range runs {
		opens[i] = t.Open
		if t.Saturation != nil {
			sats = append(sats, *t.Saturation)
		}
	}
	m.Open = medianLoad(opens)
	if len(sats) == len(runs) {
		s := medianLoad(sats)
		m.Saturation = &s
	}
	return m
}

// medianLoad merges load runs of the same workloads: medians of the rates
// and of each percentile, sums of requests, successes, errors and time.
func medianLoad(runs []LoadResult) LoadResult {
	m := LoadResult{Mode: runs[0].Mode, TargetRate: runs[0].TargetRate}
	m.RPS = medianOf(runs, func(r LoadResult) float64 { return r.RPS })
	alls := make([]WorkloadResult, len(runs))
	for i, r := range runs {
		m.Elapsed += r.Elapsed
		alls[i] = r.All
	}
	m.All = medianWorkload(alls)
	for w := range runs[0].Workloads {
		ws := make([]WorkloadResult, 0, len(runs))
		for _, r := range runs {
			if w < len(r.Workloads) {
				ws = append(ws, r.Workloads[w])
			}
		}
		m.Workloads = append(m.Workloads, medianWorkload(ws))
	}
	return m
}

// medianWorkload is medianLoad for one workload.
func medianWorkload(runs []WorkloadResult) WorkloadResult {
	m := WorkloadResult{Name: runs[0].Name, Errors: map[string]int64{}}
	lat := make([]Percentiles, len(runs))
	for i, r := range runs {
		m.Requests += r.Requests
		m.OK += r.OK
		for class, n := range r.Errors {
			m.Errors[class] += n
		}
		lat[i] = r.Latency
	}
	pick := func(f func(Percentiles) float64) float64 { return medianOf(lat, f) }
	m.Latency = Percentiles{
		P50:  pick(func(p Percentiles) float64 { return p.P50 }),
		P90:  pick(func(p Percentiles) float64 { return p.P90 }),
		P99:  pick(func(p Percentiles) float64 { return p.P99 }),
		P999: pick(func(p Percentiles) float64 { return p.P999 }),
		Max:  pick(func(p Percentiles) float64 { return p.Max }),
		Mean: pick(func(p Percentiles) float64 { return p.Mean }),
	}
	return m
}

// medianOf is the median of f over xs: the middle value, or the mean of
// the two middle ones; 0 for none.
func medianOf[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// roundsTable gives, per round, ballast's CPU and saturation throughput
// as multiples of each other proxy's in that round, and its added p99
// beside theirs (when direct ran): the figures a noisy machine moves
// together. Rounds without ballast are left out.
func (o *OverheadResult) roundsTable() *table {
	names := make([]string, 0, len(o.Targets))
	for _, t := range o.Targets {
		if t.Name != TargetBallast && t.Name != TargetDirect {
			names = append(names, t.Name)
		}
	}
	header := []string{"round", "ballast CPU ms / 1k"}
	for _, n := range names {
		header = append(header, "CPU ×"+n)
	}
	for _, n := range names {
		header = append(header, "saturation ×"+n)
	}
	withDirect := findTarget(o.Targets, TargetDirect) != nil
	if withDirect {
		header = append(header, "added p99 ballast")
		for _, n := range names {
			header = append(header, "added p99 "+n)
		}
	}
	t := &table{header: header}
	for r, round := range o.Rounds {
		b := findTarget(round, TargetBallast)
		if b == nil {
			continue
		}
		row := []string{fmt.Sprint(r + 1), fmt.Sprintf("%.1f", b.CPUPer1k)}
		for _, n := range names {
			row = append(row, fmtRatio(ratio(b.CPUPer1k, findTarget(round, n).CPUPer1k)))
		}
		for _, n := range names {
			row = append(row, satRatio(b, findTarget(round, n)))
		}
		if withDirect {
			row = append(row, fmtAdded(b.AddedLatency.P99))
			for _, n := range names {
				row = append(row, fmtAdded(findTarget(round, n).AddedLatency.P99))
			}
		}
		t.add(row...)
	}
	return t
}

// satRatio is a's saturation throughput over b's, "–" when either skipped
// the closed loop.
func satRatio(a, b *OverheadTarget) string {
	if a.Saturation == nil || b.Saturation == nil {
		return "–"
	}
	return fmtRatio(ratio(a.Saturation.RPS, b.Saturation.RPS))
}

// findTarget is the target named name, nil when it did not run.
func findTarget(ts []OverheadTarget, name string) *OverheadTarget {
	for i := range ts {
		if ts[i].Name == name {
			return &ts[i]
		}
	}
	return nil
}
