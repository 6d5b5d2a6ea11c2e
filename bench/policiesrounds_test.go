package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// policiesRound is one round of off and validate at the given CPU, with
// validate's p99 1 ms above off's.
func policiesRound(offCPU, validateCPU float64) []PolicyVariant {
	lat := func(p99 float64) LoadResult {
		return LoadResult{RPS: 2000, All: WorkloadResult{Requests: 100, OK: 100, Latency: Percentiles{P50: 0.1, P99: p99}}}
	}
	return []PolicyVariant{
		{Name: VariantOff, Config: "off cfg", CPUPer1k: offCPU, Open: lat(1), PeakRSS: 10},
		{Name: "validate", Config: "v cfg", CPUPer1k: validateCPU, Open: lat(2), PeakRSS: 20},
	}
}

// TestPoliciesRoundsAreMediansWithEachRoundsRatios: with rounds, each
// variant's figures are its medians, its ratio is of the medians, and
// every round keeps its ratio against its own off, in the tables and the
// JSON.
func TestPoliciesRoundsAreMediansWithEachRoundsRatios(t *testing.T) {
	p := &PoliciesResult{Settings: Settings{Rate: 2000, Duration: "5s", Warmup: "1s", Size: 1024, Procs: 1, Rounds: 3},
		Rounds: [][]PolicyVariant{policiesRound(100, 150), policiesRound(110, 121), policiesRound(90, 99)}}
	p.summarise()
	if len(p.Variants) != 2 || p.Variants[0].CPUPer1k != 100 || p.Variants[1].CPUPer1k != 121 {
		t.Fatalf("medians: %+v", p.Variants)
	}
	if r := p.Variants[1].CPURatio; r != 1.21 {
		t.Errorf("ratio of the medians: %v, want 1.21", r)
	}
	if got := p.Variants[1].Open.All.Requests; got != 300 {
		t.Errorf("requests over the rounds: %d, want 300", got)
	}
	if got := p.Variants[1].PeakRSS; got != 20 {
		t.Errorf("peak RSS: %d, want the highest, 20", got)
	}
	for i, want := range []float64{1.5, 1.1, 1.1} {
		if r := p.Rounds[i][1].CPURatio; r < want-1e-9 || r > want+1e-9 {
			t.Errorf("round %d: CPU ratio %v, want %v (against that round's off)", i+1, r, want)
		}
	}
	rep := &Report{Policies: p}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	md := string(rep.Markdown(""))
	for _, want := range []string{"3 rounds, the variants taking turns", "CPU ×off, round 3", "added p99, round 2", "1.50×", "1.10×", "1.21×", "+1.000"} {
		if !strings.Contains(text.String(), want) || !strings.Contains(md, want) {
			t.Errorf("%q missing:\n%s\n%s", want, text.String(), md)
		}
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Policies struct {
			Settings Settings          `json:"settings"`
			Rounds   [][]PolicyVariant `json:"rounds"`
		} `json:"policies"`
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Policies.Settings.Rounds != 3 || len(back.Policies.Rounds) != 3 || back.Policies.Rounds[0][1].CPURatio != 1.5 {
		t.Errorf("JSON lacks the rounds: %+v", back.Policies)
	}

	one := &PoliciesResult{Rounds: [][]PolicyVariant{policiesRound(100, 150)}}
	one.summarise()
	if one.Rounds != nil || len(one.Variants) != 2 || one.Variants[1].CPURatio != 1.5 {
		t.Errorf("one round: %+v", one)
	}
	rep = &Report{Policies: one}
	if md := string(rep.Markdown("")); strings.Contains(md, "round") {
		t.Errorf("one round printed a rounds table:\n%s", md)
	}
}

// TestPoliciesRunsRoundsTakingTurns runs the policies scenario for real
// with two rounds of two variants (tiny durations; shapes, never
// throughput): each round measures both, the second starting with the
// variant the first ran last.
func TestPoliciesRunsRoundsTakingTurns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	exe := buildBallast(t)
	var progress bytes.Buffer
	p, err := Policies(context.Background(), Options{Exe: exe, Duration: 150 * time.Millisecond, Warmup: -1, Rate: 150,
		Connections: 4, Targets: []string{"validate"}, Rounds: 2, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if p.Settings.Rounds != 2 || len(p.Rounds) != 2 || len(p.Variants) != 2 {
		t.Fatalf("rounds %d, %d rounds, %d variants", p.Settings.Rounds, len(p.Rounds), len(p.Variants))
	}
	for r, round := range p.Rounds {
		if round[0].Name != VariantOff || round[1].Name != "validate" {
			t.Errorf("round %d: %s, %s; want off, validate", r+1, round[0].Name, round[1].Name)
		}
		for _, v := range round {
			if a := v.Open.All; a.Requests == 0 || a.OK != a.Requests {
				t.Errorf("round %d, %s: %+v", r+1, v.Name, a)
			}
		}
	}
	order := []string{
		"policies: round 1 of 2: off open loop", "policies: round 1 of 2: validate open loop",
		"policies: round 2 of 2: validate open loop", "policies: round 2 of 2: off open loop",
	}
	at := 0
	for _, line := range order {
		i := strings.Index(progress.String()[at:], line)
		if i < 0 {
			t.Fatalf("progress lacks %q after offset %d:\n%s", line, at, progress.String())
		}
		at += i + len(line)
	}
}

// TestStateRoundsAreMediansWithEachRoundsRatios: the state scenario's
// rounds, as the policies scenario's: medians, each round's ratio against
// its own unkeyed, and a rounds table.
func TestStateRoundsAreMediansWithEachRoundsRatios(t *testing.T) {
	round := func(unkeyed, file float64) []StateTarget {
		return []StateTarget{
			{Name: StoreUnkeyed, Load: LoadResult{RPS: unkeyed}, PeakRSS: 1},
			{Name: StoreFile, Load: LoadResult{RPS: file}, PeakRSS: 2},
		}
	}
	r := &StateResult{Settings: Settings{Connections: 64, Duration: "10s", Warmup: "1s", Procs: 2, Rounds: 3},
		Rounds: [][]StateTarget{round(1000, 400), round(900, 540), round(1100, 600)}, Skipped: map[string]string{}}
	r.summarise()
	if len(r.Targets) != 2 || r.Targets[1].Load.RPS != 540 || r.Targets[1].RPSRatio != 0.54 {
		t.Fatalf("medians: %+v", r.Targets)
	}
	for i, want := range []float64{0.4, 0.6, 600.0 / 1100} {
		if got := r.Rounds[i][1].RPSRatio; got < want-1e-9 || got > want+1e-9 {
			t.Errorf("round %d: %v, want %v", i+1, got, want)
		}
	}
	md := string((&Report{State: r}).Markdown(""))
	for _, want := range []string{"3 rounds, the stores taking turns", "rps ×unkeyed, round 3", "0.40×", "0.60×", "0.55×", "0.54×"} {
		if !strings.Contains(md, want) {
			t.Errorf("%q missing:\n%s", want, md)
		}
	}
}

// TestStateRunsRoundsTakingTurns runs the state scenario for real with two
// rounds of unkeyed and the file store (tiny durations; shapes, never
// throughput): the file store starts empty each round, and each progress
// line is one write.
func TestStateRunsRoundsTakingTurns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	exe := buildBallast(t)
	var lines lineWrites
	r, err := State(context.Background(), Options{Exe: exe, Duration: 150 * time.Millisecond, Warmup: -1,
		Connections: 4, Targets: []string{StoreFile}, Rounds: 2, Progress: &lines})
	if err != nil {
		t.Fatal(err)
	}
	if r.Settings.Rounds != 2 || len(r.Rounds) != 2 || len(r.Targets) != 2 || r.Targets[1].RPSRatio <= 0 {
		t.Fatalf("rounds %d, %d rounds, targets %+v", r.Settings.Rounds, len(r.Rounds), r.Targets)
	}
	for _, want := range []string{"state: round 1 of 2: unkeyed closed loop", "state: round 2 of 2: file closed loop"} {
		if !lines.has(want) {
			t.Errorf("no single write holds %q: %q", want, lines.writes)
		}
	}
}

// lineWrites keeps every write apart, to check that a progress line is
// one write (what a watcher of the progress, like killOnLine, sees).
type lineWrites struct {
	mu     sync.Mutex
	writes []string
}

func (l *lineWrites) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes = append(l.writes, string(b))
	return len(b), nil
}

func (l *lineWrites) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range l.writes {
		if strings.Contains(w, s) {
			return true
		}
	}
	return false
}
