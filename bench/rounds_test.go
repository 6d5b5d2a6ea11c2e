package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMedianOf(t *testing.T) {
	id := func(v float64) float64 { return v }
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{name: "none", in: nil, want: 0},
		{name: "one", in: []float64{7}, want: 7},
		{name: "odd, unsorted", in: []float64{9, 1, 5}, want: 5},
		{name: "even: the mean of the middle two", in: []float64{4, 1, 10, 2}, want: 3},
		{name: "an outlier does not move it", in: []float64{30, 31, 300}, want: 31},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := medianOf(tt.in, id); got != tt.want {
				t.Errorf("medianOf(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// roundOf is one round's targets: direct, bare and ballast, with CPU per
// 1k, saturation rps and p99 as given, per target in that order.
func roundOf(cpu, sat, p99 [3]float64, rss int64) []OverheadTarget {
	names := []string{TargetDirect, TargetBare, TargetBallast}
	ts := make([]OverheadTarget, 3)
	for i, n := range names {
		open := LoadResult{Mode: "open", TargetRate: 2000, Elapsed: time.Second, RPS: 2000,
			All:       WorkloadResult{Name: "all", Requests: 2000, OK: 1999, Errors: map[string]int64{"timeout": 1}, Latency: Percentiles{P50: p99[i] / 2, P99: p99[i]}},
			Workloads: []WorkloadResult{{Name: "chat", Requests: 2000, OK: 1999, Errors: map[string]int64{"timeout": 1}, Latency: Percentiles{P99: p99[i]}}}}
		s := LoadResult{Mode: "closed", Elapsed: time.Second, RPS: sat[i], All: WorkloadResult{Name: "all", Requests: int64(sat[i]), OK: int64(sat[i])}}
		ts[i] = OverheadTarget{Name: n, Open: open, Saturation: &s, CPUPer1k: cpu[i], UpstreamCPUPer1k: 10, PeakRSS: rss}
	}
	compare(ts)
	return ts
}

func TestMedianTargetOverRounds(t *testing.T) {
	rounds := [][]OverheadTarget{
		roundOf([3]float64{20, 40, 44}, [3]float64{100e3, 50e3, 52e3}, [3]float64{0.2, 0.4, 0.45}, 20<<20),
		roundOf([3]float64{21, 42, 80}, [3]float64{90e3, 48e3, 20e3}, [3]float64{0.2, 0.5, 4.0}, 30<<20), // a noisy window
		roundOf([3]float64{22, 41, 43}, [3]float64{95e3, 47e3, 49e3}, [3]float64{0.3, 0.4, 0.42}, 25<<20),
	}
	var ballast []OverheadTarget
	for _, r := range rounds {
		ballast = append(ballast, r[2])
	}
	m := medianTarget(ballast)
	if m.Name != TargetBallast || m.CPUPer1k != 44 || m.UpstreamCPUPer1k != 10 || m.PeakRSS != 30<<20 {
		t.Errorf("median ballast: name %s, CPU %v, upstream %v, RSS %d", m.Name, m.CPUPer1k, m.UpstreamCPUPer1k, m.PeakRSS)
	}
	if m.Saturation == nil || m.Saturation.RPS != 49e3 || m.Saturation.Mode != "closed" {
		t.Errorf("median saturation: %+v", m.Saturation)
	}
	if l := m.Open.All.Latency; l.P99 != 0.45 || l.P50 != 0.225 {
		t.Errorf("median latency %+v: one noisy round must not set it", l)
	}
	if a := m.Open.All; a.Requests != 6000 || a.OK != 5997 || a.Errors["timeout"] != 3 || m.Open.Elapsed != 3*time.Second {
		t.Errorf("the rounds' requests and errors are not added up: %+v, elapsed %v", a, m.Open.Elapsed)
	}
	if len(m.Open.Workloads) != 1 || m.Open.Workloads[0].Name != "chat" || m.Open.Workloads[0].Latency.P99 != 0.45 {
		t.Errorf("median workloads: %+v", m.Open.Workloads)
	}

	// A target that skipped the closed loop in any round has no median one.
	ballast[1].Saturation = nil
	if medianTarget(ballast).Saturation != nil {
		t.Error("a median saturation from some rounds only")
	}
}

func TestRoundsTableRenders(t *testing.T) {
	o := &OverheadResult{
		Settings: Options{Duration: time.Second, Rate: 2000, Connections: 64, Size: 1024, Saturation: time.Second, Rounds: 2}.settings(),
		Rounds: [][]OverheadTarget{
			roundOf([3]float64{20, 40, 44}, [3]float64{100e3, 50e3, 55e3}, [3]float64{0.2, 0.4, 0.5}, 20<<20),
			roundOf([3]float64{20, 40, 30}, [3]float64{100e3, 50e3, 45e3}, [3]float64{0.2, 0.4, 0.3}, 20<<20),
		},
	}
	o.Settings.Rounds = 2
	for i := range 3 {
		o.Targets = append(o.Targets, medianTarget([]OverheadTarget{o.Rounds[0][i], o.Rounds[1][i]}))
	}
	compare(o.Targets)
	r := &Report{Overhead: o}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{text.String(), string(r.Markdown(""))} {
		for _, want := range []string{"2 rounds, the targets taking turns", roundsIntro, "CPU ×bare", "saturation ×bare",
			"1.10×", "0.75×", "1.10×", "0.90×", "+0.300", "+0.100", "added p99 bare"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	}
}
