package bench

import (
	"fmt"
	"slices"
)

// roundPrefix begins a scenario's progress line for one run: "state: ",
// or "state: round 2 of 3: " when there are rounds. A line is one write.
func roundPrefix(scenario string, round, rounds int) string {
	if rounds > 1 {
		return fmt.Sprintf("%s: round %d of %d: ", scenario, round+1, rounds)
	}
	return scenario + ": "
}

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
	var lags []Percentiles
	for i, r := range runs {
		m.Elapsed += r.Elapsed
		alls[i] = r.All
		if r.ScheduleLag != nil {
			lags = append(lags, *r.ScheduleLag)
		}
	}
	if len(lags) > 0 {
		lag := medianPercentiles(lags)
		m.ScheduleLag = &lag
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
	m.Latency = medianPercentiles(lat)
	return m
}

// medianPercentiles is each percentile's median over runs.
func medianPercentiles(runs []Percentiles) Percentiles {
	pick := func(f func(Percentiles) float64) float64 { return medianOf(runs, f) }
	return Percentiles{
		P50:  pick(func(p Percentiles) float64 { return p.P50 }),
		P90:  pick(func(p Percentiles) float64 { return p.P90 }),
		P99:  pick(func(p Percentiles) float64 { return p.P99 }),
		P999: pick(func(p Percentiles) float64 { return p.P999 }),
		Max:  pick(func(p Percentiles) float64 { return p.Max }),
		Mean: pick(func(p Percentiles) float64 { return p.Mean }),
	}
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

// RoundVersus is one round of the overhead scenario seen from ballast:
// its CPU and saturation throughput as multiples of each other proxy's in
// that round, and each one's latency added to direct's. These are the
// figures of the per-round table, for a machine reading the JSON.
type RoundVersus struct {
	// Round is the round's number, from 1.
	Round int `json:"round"`
	// BallastCPUPer1k is ballast's CPU ms per 1,000 requests that round.
	BallastCPUPer1k float64 `json:"ballast_cpu_ms_per_1k"`
	// BallastAdded is ballast's open-loop latency minus direct's that
	// round; nil when direct did not run.
	BallastAdded *Percentiles `json:"ballast_added_latency,omitempty"`
	// Versus has one entry per other proxy (bare, nginx), in target order.
	Versus []ProxyVersus `json:"versus"`
}

// ProxyVersus is ballast against one other proxy in one round.
type ProxyVersus struct {
	Name string `json:"name"`
	// CPURatio is ballast's CPU per 1,000 requests over this proxy's; 0
	// when this proxy's was 0 (the table's "–").
	CPURatio float64 `json:"cpu_ratio"`
	// SaturationRatio is ballast's saturation rps over this proxy's; 0
	// when either skipped the closed loop (the table's "–").
	SaturationRatio float64 `json:"saturation_ratio"`
	// Added is this proxy's open-loop latency minus direct's that round;
	// nil when direct did not run.
	Added *Percentiles `json:"added_latency,omitempty"`
}

// ballastVersus compares ballast with the other proxies round by round,
// the proxies in the order of o.Targets. Rounds without ballast are left
// out; nil with fewer than two rounds.
func (o *OverheadResult) ballastVersus() []RoundVersus {
	if len(o.Rounds) < 2 {
		return nil
	}
	var names []string
	for _, t := range o.Targets {
		if t.Name != TargetBallast && t.Name != TargetDirect {
			names = append(names, t.Name)
		}
	}
	var out []RoundVersus
	for r, round := range o.Rounds {
		b := findTarget(round, TargetBallast)
		if b == nil {
			continue
		}
		direct := findTarget(round, TargetDirect) != nil
		rv := RoundVersus{Round: r + 1, BallastCPUPer1k: b.CPUPer1k, Versus: []ProxyVersus{}}
		if direct {
			added := b.AddedLatency
			rv.BallastAdded = &added
		}
		for _, n := range names {
			pv := ProxyVersus{Name: n}
			if t := findTarget(round, n); t != nil {
				pv.CPURatio = ratio(b.CPUPer1k, t.CPUPer1k)
				if b.Saturation != nil && t.Saturation != nil {
					pv.SaturationRatio = ratio(b.Saturation.RPS, t.Saturation.RPS)
				}
				if direct {
					added := t.AddedLatency
					pv.Added = &added
				}
			}
			rv.Versus = append(rv.Versus, pv)
		}
		out = append(out, rv)
	}
	return out
}

// roundsTable gives, per round, ballast's CPU and saturation throughput
// as multiples of each other proxy's in that round, and its added p99
// beside theirs (when direct ran): the figures a noisy machine moves
// together, from ballastVersus (RoundsVersus in the JSON).
func (o *OverheadResult) roundsTable() *table {
	var names []string
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
	for _, rv := range o.ballastVersus() {
		row := []string{fmt.Sprint(rv.Round), fmt.Sprintf("%.1f", rv.BallastCPUPer1k)}
		for _, v := range rv.Versus {
			row = append(row, fmtRatio(v.CPURatio))
		}
		for _, v := range rv.Versus {
			row = append(row, fmtRatio(v.SaturationRatio))
		}
		if withDirect {
			row = append(row, fmtAddedP99(rv.BallastAdded))
			for _, v := range rv.Versus {
				row = append(row, fmtAddedP99(v.Added))
			}
		}
		t.add(row...)
	}
	return t
}

// fmtAddedP99 is an added p99, "–" when there is none (direct missing
// from the round).
func fmtAddedP99(a *Percentiles) string {
	if a == nil {
		return "–"
	}
	return fmtAdded(a.P99)
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

// summariseRounds is how every scenario run in rounds reports: each round
// is compared within itself (compare), so that its ratios are against
// its own baseline; then with one round its targets are the report's and
// no rounds are kept, and with more each target's figures are the median
// over the rounds (median, given one target's runs in round order),
// compared again. rounds must list the same targets in the same order.
func summariseRounds[T any](rounds [][]T, compare func([]T), median func([]T) T) (targets []T, kept [][]T) {
	for _, r := range rounds {
		compare(r)
	}
	switch len(rounds) {
	case 0:
		return nil, nil
	case 1:
		return rounds[0], nil
	}
	for i := range rounds[0] {
		runs := make([]T, len(rounds))
		for k, round := range rounds {
			runs[k] = round[i]
		}
		targets = append(targets, median(runs))
	}
	compare(targets)
	return targets, rounds
}

// inTurns measures each of n targets once a round for rounds rounds, each
// round starting one target later than the one before, so that a noisy
// stretch of a shared machine lands on one round's figures rather than on
// one target's. measure gets the round (from 0) and the target's index;
// each round lists the targets in index order. The first error ends it.
func inTurns[T any](rounds, n int, measure func(round, k int) (T, error)) ([][]T, error) {
	out := make([][]T, 0, rounds)
	for round := range rounds {
		measured := make([]T, n)
		for i := range n {
			k := (round + i) % n
			m, err := measure(round, k)
			if err != nil {
				return nil, err
			}
			measured[k] = m
		}
		out = append(out, measured)
	}
	return out, nil
}
