package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-proxy/ballast/bench"
)

// benchCLI runs the built binary (the harness starts its children from
// its own executable) and returns stdout.
func benchCLI(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"bench"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ballast bench %v: %v\n%s", args, err, errb.String())
	}
	return out.String()
}

// The CI smoke: tiny runs that check the tables are produced with sane
// numbers. They assert no throughput figure.
func TestBenchOverheadSmoke(t *testing.T) {
	out := benchCLI(t, "overhead", "--duration", "300ms", "--warmup", "50ms", "--saturation", "200ms", "--rate", "200", "--connections", "8", "--json")
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON (NaN would not encode): %v\n%s", err, out)
	}
	o := rep.Overhead
	if o == nil || rep.Machine.Cores <= 0 || rep.Machine.Go == "" {
		t.Fatalf("report %+v", rep)
	}
	names := map[string]bool{}
	for _, tg := range o.Targets {
		names[tg.Name] = true
		a := tg.Open.All
		if a.Requests == 0 || tg.Open.RPS <= 0 || a.OK != a.Requests || a.Latency.P50 <= 0 || a.Latency.P999 < a.Latency.P50 {
			t.Errorf("%s open loop: rps %v, %+v", tg.Name, tg.Open.RPS, a)
		}
		if tg.Saturation == nil || tg.Saturation.RPS <= 0 || tg.CPUPer1k < 0 || tg.PeakRSS <= 0 {
			t.Errorf("%s: saturation %+v, cpu %v, rss %v", tg.Name, tg.Saturation, tg.CPUPer1k, tg.PeakRSS)
		}
		if tg.Name != bench.TargetDirect && (tg.RPSRatio <= 0 || tg.LatencyRatio.P50 <= 0) {
			t.Errorf("%s: ratios against direct not computed: %v %+v", tg.Name, tg.RPSRatio, tg.LatencyRatio)
		}
	}
	for _, want := range []string{bench.TargetDirect, bench.TargetBare, bench.TargetBallast} {
		if !names[want] {
			t.Errorf("no %s target in %v", want, names)
		}
	}
	if names[bench.TargetNginx] != (bench.NginxPath() != "") {
		t.Errorf("nginx ran %v, on PATH %v", names[bench.TargetNginx], bench.NginxPath() != "")
	}
}

func TestBenchStreamSmoke(t *testing.T) {
	out := benchCLI(t, "stream", "--duration", "300ms", "--warmup", "50ms", "--rate", "40", "--stream-events", "4", "--stream-interval", "2ms", "--json")
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON (NaN would not encode): %v\n%s", err, out)
	}
	s := rep.Stream
	if s == nil || rep.Overhead != nil || s.Events != 4 || s.Interval != "2ms" {
		t.Fatalf("report %+v", rep)
	}
	names := map[string]bool{}
	for _, tg := range s.Targets {
		names[tg.Name] = true
		l := tg.Load
		if l.Streams == 0 || l.Complete != l.Streams || l.Events != 4*l.Streams || l.EventDelay.P50 <= 0 || l.FirstEvent.P50 <= 0 {
			t.Errorf("%s: %+v", tg.Name, l)
		}
	}
	if !names[bench.TargetDirect] || !names[bench.TargetBallast] || names[bench.TargetNginx] != (bench.NginxPath() != "") {
		t.Errorf("targets %v (nginx on PATH: %v)", names, bench.NginxPath() != "")
	}
}

func TestBenchChaosSmoke(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "RESULTS.md"), []byte("# results\n\nhand-written\n"), 0o644)
	out := benchCLI(t, "chaos", "--duration", "400ms", "--warmup", "0", "--rate", "90", "--timeout", "1s", "--out", dir)
	for _, want := range []string{"agent-visible success", "duplicate side effects", "direct", "ballast", "get", "keyed", "model", "faults injected"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "NaN") {
		t.Errorf("NaN in output:\n%s", out)
	}
	var rep bench.Report
	js, err := os.ReadFile(filepath.Join(dir, bench.JSONFile))
	if err != nil || json.Unmarshal(js, &rep) != nil || rep.Chaos == nil || len(rep.Chaos.Targets) != 2 {
		t.Fatalf("harness.json: %v", err)
	}
	for _, tg := range rep.Chaos.Targets {
		for _, w := range tg.Workloads {
			if w.Requests == 0 || w.SuccessRate < 0 || w.SuccessRate > 1 || w.UpstreamAttempts == 0 {
				t.Errorf("%s %s: %+v", tg.Name, w.Name, w)
			}
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "RESULTS.md"))
	if !strings.HasPrefix(string(md), "# results\n\nhand-written\n") || !strings.Contains(string(md), bench.MarkerBegin) || !strings.Contains(string(md), "### Chaos") {
		t.Errorf("RESULTS.md:\n%s", md)
	}
}

func TestBenchPoliciesSmoke(t *testing.T) {
	out := benchCLI(t, "policies", "--duration", "100ms", "--warmup", "50ms", "--rate", "200", "--connections", "8", "--json")
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON (NaN would not encode): %v\n%s", err, out)
	}
	p := rep.Policies
	if p == nil || rep.Overhead != nil || rep.State != nil {
		t.Fatalf("report %+v", rep)
	}
	// Every variant ran, or was dropped with the config error that says why.
	if got, want := len(p.Variants)+len(p.Dropped), len(bench.PolicyVariantNames()); got != want {
		t.Errorf("%d variants ran + %d dropped, want %d: %v", len(p.Variants), len(p.Dropped), want, p.Dropped)
	}
	if len(p.Variants) == 0 || p.Variants[0].Name != bench.VariantOff {
		t.Fatalf("the off baseline did not run first: %+v", p.Variants)
	}
	for _, v := range p.Variants {
		a := v.Open.All
		if a.Requests == 0 || a.OK != a.Requests || a.Latency.P50 <= 0 || a.Latency.P99 < a.Latency.P50 ||
			v.CPUPer1k < 0 || v.CPURatio < 0 || v.PeakRSS <= 0 || v.Config == "" {
			t.Errorf("%s: %+v", v.Name, v)
		}
		if v.Name != bench.VariantOff && v.AddedLatency.P50 != a.Latency.P50-p.Variants[0].Open.All.Latency.P50 {
			t.Errorf("%s: added p50 %v not against off", v.Name, v.AddedLatency.P50)
		}
	}
}

func TestBenchStateSmoke(t *testing.T) {
	dir := t.TempDir()
	stores := "memory,file"
	if bench.RedisPath() != "" {
		stores += ",redis"
	}
	out := benchCLI(t, "state", "--duration", "200ms", "--warmup", "50ms", "--connections", "8", "--targets", stores, "--out", dir)
	for _, want := range []string{"rps ×unkeyed", "store CPU ms / 1k", "unkeyed", "memory", "file"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "NaN") || strings.Contains(out, "Inf") {
		t.Errorf("NaN or Inf in output:\n%s", out)
	}
	var rep bench.Report
	js, err := os.ReadFile(filepath.Join(dir, bench.JSONFile))
	if err != nil || json.Unmarshal(js, &rep) != nil || rep.State == nil {
		t.Fatalf("harness.json: %v", err)
	}
	s := rep.State
	want := strings.Count(stores, ",") + 2 // the stores asked for, plus unkeyed
	if len(s.Targets) != want || s.Targets[0].Name != bench.StoreUnkeyed {
		t.Fatalf("targets %+v, skipped %v", s.Targets, s.Skipped)
	}
	for _, st := range s.Targets {
		a := st.Load.All
		if a.Requests == 0 || a.OK != a.Requests || st.Load.RPS <= 0 || st.CPUPer1k < 0 || st.PeakRSS <= 0 {
			t.Errorf("%s: %+v", st.Name, st)
		}
		if st.Name != bench.StoreUnkeyed && st.RPSRatio <= 0 {
			t.Errorf("%s: rps ratio against unkeyed not computed", st.Name)
		}
		if st.Name != bench.StoreRedis && st.StoreCPUPer1k != 0 {
			t.Errorf("%s: store CPU %v without a store process", st.Name, st.StoreCPUPer1k)
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "RESULTS.md"))
	if !strings.Contains(string(md), "### State") || strings.Contains(string(md), "ballast-bench") {
		t.Errorf("RESULTS.md:\n%s", md)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
	}{
		{name: "no scenario", args: []string{"bench"}},
		{name: "unknown scenario", args: []string{"bench", "frobnicate"}},
		{name: "bad flag", args: []string{"bench", "soak", "--sample-every", "soon"}},
		{name: "unknown profile", args: []string{"bench", "upstream", "--profile", "nope"}},
		{name: "percentages above 100", args: []string{"bench", "upstream", "--p503", "80", "--p429", "30"}},
		{name: "bare proxy without upstream", args: []string{"bench", "bare-proxy"}},
		{name: "unknown driver", args: []string{"bench", "overhead", "--driver", "ab"}},
		{name: "unknown driver in any scenario", args: []string{"bench", "chaos", "--driver", "ab"}},
		{name: "stray argument", args: []string{"bench", "overhead", "chaos", "--duration", "1s"}},
		{name: "stray argument to upstream", args: []string{"bench", "upstream", "standard"}},
		{name: "stray argument to bare proxy", args: []string{"bench", "bare-proxy", "--upstream", "127.0.0.1:1", "x"}},
		{name: "config in another scenario", args: []string{"bench", "chaos", "--config", "ballast.yaml"}},
		{name: "config with all", args: []string{"bench", "all", "--config", "ballast.yaml"}},
		{name: "path in another scenario", args: []string{"bench", "policies", "--path", "/v1/x"}},
		{name: "method in another scenario", args: []string{"bench", "state", "--method", "GET"}},
		{name: "path without a slash", args: []string{"bench", "overhead", "--path", "v1/x"}},
		{name: "path with a space", args: []string{"bench", "overhead", "--path", "/v1/a b"}},
		{name: "lower-case method", args: []string{"bench", "overhead", "--method", "get"}},
		{name: "cpuprofile in another scenario", args: []string{"bench", "chaos", "--cpuprofile", "p"}},
		{name: "cpuprofile with all", args: []string{"bench", "all", "--cpuprofile", "p"}},
		{name: "stream events in another scenario", args: []string{"bench", "overhead", "--stream-events", "5"}},
		{name: "stream interval in another scenario", args: []string{"bench", "chaos", "--stream-interval", "1ms"}},
		{name: "no stream events", args: []string{"bench", "stream", "--stream-events", "0"}},
		{name: "no stream interval", args: []string{"bench", "stream", "--stream-interval", "0"}},
		{name: "config in stream", args: []string{"bench", "stream", "--config", "ballast.yaml"}},
		// rate × timeout = 30,000 chaos requests in flight: refused before
		// anything runs, not after overhead has been measured for minutes.
		{name: "chaos load too large", args: []string{"bench", "chaos", "--rate", "300", "--timeout", "100s"}},
		{name: "chaos load too large with all", args: []string{"bench", "all", "--rate", "300", "--timeout", "100s"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(c.args, &out, &errb); code != 2 {
				t.Errorf("exit %d, want 2: %s", code, errb.String())
			}
		})
	}
}

// The flags reach the scenario: the user's config is measured on the
// route --path picks, and ballast's CPU profile is written where
// --cpuprofile says.
func TestBenchOverheadConfigAndProfile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mine.yaml")
	if err := os.WriteFile(cfg, []byte(`
listen: 0.0.0.0:8080
routes:
  - name: chat
    match: {path_prefix: /v1/}
    upstream: https://api.example.com
  - name: tools
    match: {path_prefix: /tools/, methods: [GET]}
    upstream: https://tools.example.com/api
`), 0o600); err != nil {
		t.Fatal(err)
	}
	profiles := filepath.Join(dir, "profiles")
	out := benchCLI(t, "overhead", "--config", cfg, "--method", "GET", "--path", "/tools/find", "--cpuprofile", profiles,
		"--targets", "ballast", "--duration", "300ms", "--warmup", "0", "--saturation", "0", "--rate", "150", "--connections", "4")
	profile := filepath.Join(profiles, "ballast-cpu-1.pprof")
	for _, want := range []string{"requests GET /tools/find", "ballast with the config " + cfg + " (its route tools;", "go tool pprof -top " + profile} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if fi, err := os.Stat(profile); err != nil || fi.Size() == 0 {
		t.Errorf("profile: %v", err)
	}
}

// A --config that does not load is a usage error naming the file and
// its problem, before anything starts.
func TestBenchOverheadBadConfigIsAUsageError(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "mine.yaml")
	if err := os.WriteFile(bad, []byte("routes: [{name: x, match: {path_prefix: /}, upstream: \"ftp://x\"}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "overhead", "--config", bad, "--saturation", "0"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2: %s", code, errb.String())
	}
	if msg := errb.String(); !strings.Contains(msg, bad) || !strings.Contains(msg, "routes[0].upstream") {
		t.Errorf("stderr %q does not name the file and the problem", msg)
	}
}

// `bench upstream` reports the profile it serves: a fault flag makes it
// NAME+custom, while --retry-after and --hang-for only time the hints and
// hangs and keep the name.
func TestBenchUpstreamNamesItsProfile(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{name: "named", args: []string{"--profile", "standard"}, want: "profile standard,"},
		{name: "fault flag", args: []string{"--profile", "standard", "--p503", "20"}, want: "profile standard+custom,"},
		{name: "retry-after alone", args: []string{"--profile", "standard", "--retry-after", "2s"}, want: "profile standard,"},
		{name: "hang-for alone", args: []string{"--profile", "standard", "--hang-for", "2s"}, want: "profile standard,"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"bench", "upstream", "--listen", "127.0.0.1:0"}, c.args...)...)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil {
				t.Fatalf("no banner: %v", err)
			}
			if !strings.Contains(line, c.want) {
				t.Errorf("banner %q, want %q", line, c.want)
			}
		})
	}
}

// A stream shape the driver cannot measure is a usage error before any
// scenario runs, with all too (the stream scenario runs last there).
func TestBenchStreamShapeIsAUsageError(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"streams longer than the timeout", []string{"stream", "--stream-events", "5", "--stream-interval", "1s", "--timeout", "2s", "--duration", "100ms", "--warmup", "0"}, "every stream would time out"},
		{"more streams open than connections", []string{"stream", "--rate", "1000", "--duration", "100ms", "--warmup", "0"}, "200 streams open at once, above the 64 connections"},
		{"all", []string{"all", "--stream-interval", "1s"}, "every stream would time out"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"bench"}, c.args...)...)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			err := cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(errb.String(), c.want) {
				t.Errorf("exit %d (%v), want 2 saying %q:\n%s", code, err, c.want, errb.String())
			}
			if strings.Contains(errb.String(), "starting") || strings.Contains(errb.String(), "open loop") {
				t.Errorf("a scenario ran:\n%s", errb.String())
			}
		})
	}
}
