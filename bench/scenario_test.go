package bench

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildBallast builds cmd/ballast: the scenarios run their children from it.
func buildBallast(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the ballast binary needs the go toolchain on PATH: %v", err)
	}
	exe := filepath.Join(t.TempDir(), "ballast")
	cmd := exec.Command(gobin, "build", "-o", exe, "../cmd/ballast")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building ballast: %v\n%s", err, out)
	}
	return exe
}

// TestScenarios runs both scenarios in this process (so goleak checks the
// harness) with tiny durations, and checks shapes, never throughput.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	exe := buildBallast(t)
	var progress bytes.Buffer
	opts := Options{Exe: exe, Duration: 200 * time.Millisecond, Warmup: -1, Saturation: 100 * time.Millisecond,
		Rate: 150, Connections: 4, Timeout: time.Second, Targets: []string{TargetDirect, TargetBare, TargetBallast},
		Rounds: 2, Driver: DriverGo, Progress: &progress}
	o, err := Overhead(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Targets) != 3 || len(o.Rounds) != 2 || o.Settings.Rounds != 2 || o.Settings.SaturationDriver != DriverGo {
		t.Fatalf("%d targets, %d rounds (settings: %+v)", len(o.Targets), len(o.Rounds), o.Settings)
	}
	for _, tg := range o.Targets[1:] {
		if tg.Open.All.OK == 0 || tg.RPSRatio <= 0 || tg.LatencyRatio.P99 <= 0 {
			t.Errorf("%s: %+v", tg.Name, tg)
		}
	}
	for r, round := range o.Rounds {
		for i, tg := range round {
			if tg.Name != o.Targets[i].Name || tg.Open.All.OK == 0 {
				t.Errorf("round %d, target %d: %+v", r+1, i, tg)
			}
		}
		if round[2].RPSRatio <= 0 {
			t.Errorf("round %d: ballast not compared with that round's direct", r+1)
		}
	}
	if sum := o.Rounds[0][2].Open.All.Requests + o.Rounds[1][2].Open.All.Requests; o.Targets[2].Open.All.Requests != sum {
		t.Errorf("ballast's median run counts %d requests, the rounds %d", o.Targets[2].Open.All.Requests, sum)
	}
	// The second round starts one target later.
	if !strings.Contains(progress.String(), "round 2 of 2: bare open loop") ||
		strings.Index(progress.String(), "round 2 of 2: bare") > strings.Index(progress.String(), "round 2 of 2: direct") {
		t.Errorf("round 2 did not start with bare:\n%s", progress.String())
	}
	c, err := Chaos(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Targets) != 2 || c.Profile.Name != "standard" {
		t.Fatalf("%+v", c)
	}
	direct := c.Targets[0]
	var faults int64
	for name, n := range direct.Faults {
		if name != "none" {
			faults += n
		}
	}
	if faults == 0 {
		t.Errorf("the standard profile injected nothing: %v", direct.Faults)
	}
	for _, w := range direct.Workloads {
		if w.Duplicates != 0 {
			t.Errorf("direct %s: %d duplicate side effects without any retrying proxy", w.Name, w.Duplicates)
		}
	}
}

// TestOverheadSaturationWithWrk runs the overhead scenario with wrk as the
// saturation driver (wrk must be installed: scripts/test-deps.sh).
func TestOverheadSaturationWithWrk(t *testing.T) {
	exe := buildBallast(t)
	var progress bytes.Buffer
	o, err := Overhead(context.Background(), Options{Exe: exe, Duration: 200 * time.Millisecond, Warmup: -1,
		Saturation: time.Second, Rate: 150, Connections: 4, Timeout: time.Second,
		Targets: []string{TargetDirect, TargetBallast}, Driver: DriverWrk, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if o.Settings.SaturationDriver != DriverWrk || !strings.Contains(o.summary(), "(wrk -t1 -c4)") {
		t.Errorf("settings %+v, summary %q", o.Settings, o.summary())
	}
	if !strings.Contains(progress.String(), "ballast closed loop, 4 connections for 1s (wrk driver)") {
		t.Errorf("progress:\n%s", progress.String())
	}
	if len(o.Targets) != 2 {
		t.Fatalf("%d targets", len(o.Targets))
	}
	for _, tg := range o.Targets {
		s := tg.Saturation
		if s == nil {
			t.Fatalf("%s: no saturation run", tg.Name)
		}
		// wrk's report has no p99.9; the Go driver's open loop still does.
		if s.Mode != "closed" || s.RPS <= 0 || s.All.Requests <= 0 || s.All.OK != s.All.Requests || fmtErrors(s.All.Errors) != "0" ||
			s.All.Latency.P50 <= 0 || s.All.Latency.P999 != 0 || tg.Open.All.Latency.P999 <= 0 {
			t.Errorf("%s: saturation %+v, open %+v", tg.Name, *s, tg.Open)
		}
		if len(s.Workloads) != 1 || s.Workloads[0].Name != "chat" {
			t.Errorf("%s: workloads %+v", tg.Name, s.Workloads)
		}
	}
	if o.Targets[1].RPSRatio <= 0 {
		t.Errorf("ballast not compared with direct: %+v", o.Targets[1])
	}
}

func TestOverheadRejectsUnknownTargets(t *testing.T) {
	_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", Targets: []string{"direct", "frob"}})
	if !errors.Is(err, ErrLoad) {
		t.Errorf("err = %v, want ErrLoad before starting anything", err)
	}
}
