package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
)

func TestBallastConfigTemplateParses(t *testing.T) {
	for _, chaos := range []bool{false, true} {
		c := BallastConfig{Listen: "127.0.0.1:18080", Admin: "127.0.0.1:19901", Upstream: "127.0.0.1:19000", Chaos: chaos}
		y, err := c.check()
		if err != nil {
			t.Fatalf("chaos=%v: %v", chaos, err)
		}
		cfg, _ := config.Parse(y, config.Source{Environ: []string{}})
		if want := map[bool]int{false: 1, true: 3}[chaos]; len(cfg.Routes) != want {
			t.Errorf("chaos=%v: %d routes, want %d", chaos, len(cfg.Routes), want)
		}
		got, y2, err := c.WithSupportedFeatures(ballastFeatures)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range got.Features {
			if !slices.Contains(ballastFeatures, f) {
				t.Errorf("feature %q was never asked for", f)
			}
		}
		if _, err := config.Parse(y2, config.Source{Environ: []string{}}); err != nil {
			t.Errorf("the chosen config does not parse: %v\n%s", err, y2)
		}
	}
}

func TestBallastConfigFeatureBlocks(t *testing.T) {
	c := BallastConfig{Listen: "a:1", Admin: "b:2", Upstream: "c:3", Chaos: true, Features: []string{"retry", "validate", "idempotency"}}
	y, err := c.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"retry:", "unsafe_methods: true", "validate:", "idempotency:"} {
		if !strings.Contains(string(y), want) {
			t.Errorf("rendered config lacks %q:\n%s", want, y)
		}
	}
	c.Features = nil
	y, _ = c.Render()
	for _, absent := range []string{"retry:", "validate:", "idempotency:"} {
		if strings.Contains(string(y), absent) {
			t.Errorf("config without features has %q", absent)
		}
	}
}

func TestSpliceSection(t *testing.T) {
	cases := []struct {
		name, doc, want string
		err             bool
	}{
		{name: "empty file", doc: "", want: MarkerBegin + "\nNEW\n\n" + MarkerEnd + "\n"},
		{name: "appends after hand-written text", doc: "# R\n\nhand\n", want: "# R\n\nhand\n\n" + MarkerBegin + "\nNEW\n\n" + MarkerEnd + "\n"},
		{name: "replaces between markers, keeps the rest", doc: "top\n" + MarkerBegin + "\nOLD\n" + MarkerEnd + "\nbottom\n",
			want: "top\n" + MarkerBegin + "\nNEW\n\n" + MarkerEnd + "\nbottom\n"},
		{name: "end before begin", doc: MarkerEnd + MarkerBegin, err: true},
		{name: "begin alone", doc: MarkerBegin, err: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := SpliceSection([]byte(c.doc), []byte("NEW\n"))
			if (err != nil) != c.err {
				t.Fatalf("err %v", err)
			}
			if !c.err && string(got) != c.want {
				t.Errorf("got\n%q\nwant\n%q", got, c.want)
			}
		})
	}
}

func TestReadProcUsageSumsTheTree(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, ppid int, comm string, utime, stime int, hwmKB int) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := strconv.Itoa(pid) + " (" + comm + ") S " + strconv.Itoa(ppid) + " 1 1 0 -1 4194560 100 0 0 0 " + strconv.Itoa(utime) + " " + strconv.Itoa(stime) + " 0 0 20 0 3 0 100\n"
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
		os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t "+strconv.Itoa(hwmKB)+" kB\n"), 0o644)
	}
	proc(10, 1, "nginx: master (x) y", 3, 2, 100)
	proc(11, 10, "nginx", 40, 10, 200)
	proc(12, 11, "odd) name", 5, 0, 50)
	proc(20, 1, "other", 1000, 1000, 9999)
	os.MkdirAll(filepath.Join(root, "self"), 0o755)
	u, err := readProcUsage(root, 10)
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU != 60*clockTick || u.PeakRSS != 350<<10 {
		t.Errorf("usage %+v, want 600ms and 350 KiB", u)
	}
	if _, err := readProcUsage(root, 99); err == nil {
		t.Error("a missing process read without error")
	}
}

func TestReadProcUsageOfThisProcess(t *testing.T) {
	u, err := ReadProcUsage(os.Getpid())
	if err != nil {
		t.Fatalf("reading /proc (the harness measures children through it): %v", err)
	}
	if u.PeakRSS <= 0 || u.CPU < 0 {
		t.Errorf("%+v", u)
	}
}

func FuzzStatFields(f *testing.F) {
	f.Add([]byte("1 (a) S 0 1 1 0 -1 0 0 0 0 0 5 6"))
	f.Add([]byte("1 (a) b)) S"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if fields, err := statFields(b); err == nil && bytes.LastIndexByte(b, ')') < 0 {
			t.Errorf("fields %q from a line without (comm)", fields)
		}
	})
}

func FuzzCPUModel(f *testing.F) {
	f.Add("processor\t: 0\nmodel name\t: AMD EPYC\n")
	f.Add("model name:")
	f.Fuzz(func(t *testing.T, s string) {
		if m := cpuModel(s); m == "" && !strings.Contains(s, "model name") {
			t.Errorf("empty model from %q", s)
		}
	})
}

func TestCPUModel(t *testing.T) {
	if got := cpuModel("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nmodel name\t: other\n"); got != "AMD EPYC 7B13" {
		t.Errorf("%q", got)
	}
	if got := cpuModel("nothing"); got != "unknown" {
		t.Errorf("%q", got)
	}
}

// sampleReport is a report with every field a real run fills.
func sampleReport() *Report {
	lat := func(base float64) Percentiles {
		return Percentiles{P50: base, P90: base * 2, P99: base * 3, P999: base * 4, Max: base * 5, Mean: base * 1.5}
	}
	run := func(rps, base float64, errs map[string]int64) LoadResult {
		return LoadResult{Mode: "open", Elapsed: time.Second, RPS: rps,
			All: WorkloadResult{Name: "all", Requests: int64(rps), OK: int64(rps), Errors: errs, Latency: lat(base)}}
	}
	sat := func(rps float64) *LoadResult { r := run(rps, 1, map[string]int64{}); r.Mode = "closed"; return &r }
	o := &OverheadResult{Settings: Options{Duration: time.Second, Rate: 2000, Connections: 64, Size: 1024, Saturation: time.Second}.settings(),
		Targets: []OverheadTarget{
			{Name: TargetDirect, Open: run(2000, 0.1, map[string]int64{}), Saturation: sat(100000), CPUPer1k: 20, UpstreamCPUPer1k: 20, PeakRSS: 20 << 20},
			{Name: TargetBare, Open: run(2000, 0.15, map[string]int64{}), Saturation: sat(50000), CPUPer1k: 40, UpstreamCPUPer1k: 20, PeakRSS: 21 << 20},
			{Name: TargetBallast, Open: run(1999, 0.2, map[string]int64{"timeout": 1}), Saturation: sat(45000), CPUPer1k: 50, UpstreamCPUPer1k: 20, PeakRSS: 25 << 20},
		},
		Skipped: map[string]string{TargetNginx: "nginx is not on PATH"}}
	compare(o.Targets)
	cw := func(name string, ok int64, dups int64) ChaosWorkload {
		w := WorkloadResult{Name: name, Requests: 100, OK: ok, Errors: map[string]int64{"5xx": 100 - ok}, Latency: lat(1)}
		return ChaosWorkload{WorkloadResult: w, SuccessRate: w.SuccessRate(), UpstreamAttempts: 100 + dups, Duplicates: dups}
	}
	std, _ := NamedProfile("standard")
	c := &ChaosResult{Settings: Options{Duration: time.Second, Rate: 200, Seed: 1, Timeout: time.Second}.settings(), Profile: std,
		BallastFeatures: []string{"retry"},
		Targets: []ChaosTarget{
			{Name: TargetDirect, RPS: 300, Workloads: []ChaosWorkload{cw("get", 70, 0), cw("keyed", 70, 0), cw("model", 70, 0)}, Faults: map[string]int64{"503": 30}},
			{Name: TargetBallast, RPS: 300, Workloads: []ChaosWorkload{cw("get", 95, 3), cw("keyed", 70, 0), cw("model", 95, 4)}, Faults: map[string]int64{"503": 35}},
		}}
	return &Report{Machine: Machine{CPU: "Test CPU", Cores: 2, Kernel: "6.0", Go: "go1.26"}, Date: "2026-01-01T00:00:00Z",
		Commands: []string{"ballast bench all --out bench/"}, Overhead: o, Chaos: c}
}

func TestOverheadComparesAgainstDirect(t *testing.T) {
	o := sampleReport().Overhead
	b := o.Targets[2]
	if b.RPSRatio != 0.45 || b.LatencyRatio.P50 != 2 || b.AddedLatency.P99 < 0.299 || b.AddedLatency.P99 > 0.301 {
		t.Errorf("ballast against direct: %+v", b)
	}
	if d := o.Targets[0]; d.RPSRatio != 0 || d.AddedLatency != (Percentiles{}) {
		t.Errorf("direct compared with itself: %+v", d)
	}
	if ratio(1, 0) != 0 || per1k(time.Second, 0) != 0 || per1k(time.Second, 2000) != 500 {
		t.Error("ratio or per1k divide by zero")
	}
}

func TestReportRenders(t *testing.T) {
	r := sampleReport()
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	md := string(r.Markdown(PlotFile))
	for _, out := range []string{text.String(), md} {
		for _, want := range []string{"CPU ms / 1k req", "2.50×", "0.45×", "+0.100", "agent-visible success", "95.0%", "duplicate side effects", "retry", "nginx is not on PATH", "Test CPU"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "NaN") || strings.Contains(out, "Inf") {
			t.Errorf("NaN or Inf in output:\n%s", out)
		}
	}
	for _, want := range []string{"## Harness", "ballast bench all --out bench/", "](" + PlotFile + ")", "| target |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Overhead.Targets[2].CPUPer1k != 50 || back.Chaos.Targets[1].Workloads[2].Duplicates != 4 {
		t.Errorf("JSON round trip: %v", err)
	}
}

func TestWriteOutKeepsHandWrittenSections(t *testing.T) {
	dir := t.TempDir()
	hand := "# ballast benchmark results\n\n## Foundation\n\nhand-written\n"
	os.WriteFile(filepath.Join(dir, ResultsFile), []byte(hand), 0o644)
	r := sampleReport()
	for range 2 { // the second run replaces the first's section
		if err := r.WriteOut(dir); err != nil {
			t.Fatal(err)
		}
	}
	doc, _ := os.ReadFile(filepath.Join(dir, ResultsFile))
	if !strings.HasPrefix(string(doc), hand) || strings.Count(string(doc), MarkerBegin) != 1 || strings.Count(string(doc), "## Harness") != 1 {
		t.Errorf("RESULTS.md:\n%s", doc)
	}
	svg, err := os.ReadFile(filepath.Join(dir, PlotFile))
	if err != nil || !bytes.Contains(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("ballast")) {
		t.Errorf("plot: %v %.200s", err, svg)
	}
	if _, err := os.Stat(filepath.Join(dir, JSONFile)); err != nil {
		t.Error(err)
	}
}

func TestProfiles(t *testing.T) {
	std, err := NamedProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	if std.Error503 != 10 || std.RateLimited != 10 || std.Malformed != 5 || std.Reset != 5 || std.Hang != 2 || std.Validate() != nil {
		t.Errorf("standard = %+v", std)
	}
	if _, err := NamedProfile("nope"); err == nil {
		t.Error("unknown profile accepted")
	}
	for _, p := range []Profile{{Error500: -1}, {Error503: 60, RateLimited: 50}, {LatencyFixed: -1}} {
		if p.Validate() == nil {
			t.Errorf("%+v: valid", p)
		}
	}
}

func TestProfilePickMatchesPercentages(t *testing.T) {
	std, _ := NamedProfile("standard")
	std.CutStream = 4
	const n = 200000
	counts := map[fault]int{}
	streams := map[fault]int{}
	for i := range uint64(n) {
		d := newDraw(1, nil, i)
		u := d.float() * 100
		counts[std.pick(u, false)]++
		streams[std.pick(u, true)]++
	}
	want := map[fault]float64{fault503: 10, fault429: 10, faultMalformed: 5, faultReset: 5, faultHang: 2, faultCut: 0, faultNone: 68}
	for f, pct := range want {
		if got := float64(counts[f]) / n * 100; got < pct-0.5 || got > pct+0.5 {
			t.Errorf("%v: %.2f%%, want %.0f%%", f, got, pct)
		}
	}
	if got := float64(streams[faultCut]) / n * 100; got < 3.5 || got > 4.5 {
		t.Errorf("cut streams: %.2f%%, want 4%%", got)
	}
	if !fault500.sideEffect() || fault503.sideEffect() || fault429.sideEffect() || !faultReset.sideEffect() {
		t.Error("side effects: 500 and reset do the work; 503 and 429 do not")
	}
}

func TestLatencyDistribution(t *testing.T) {
	p := Profile{LatencyFixed: 10 * time.Millisecond, LatencyExpMean: 5 * time.Millisecond}
	var sum time.Duration
	const n = 20000
	for i := range uint64(n) {
		d := newDraw(3, []byte("k"), i)
		v := p.delay(1 - d.float())
		if v < p.LatencyFixed {
			t.Fatalf("delay %v below the fixed part", v)
		}
		sum += v
	}
	if mean := sum / n; mean < 14500*time.Microsecond || mean > 15500*time.Microsecond {
		t.Errorf("mean %v, want ≈ 15ms", mean)
	}
}

func TestOverheadSummaryNamesTheSaturationDriver(t *testing.T) {
	tests := []struct {
		name   string
		driver string
		want   string
		absent []string
	}{
		{name: "wrk", driver: DriverWrk, want: "for 1s (wrk -t1 -c64)."},
		{name: "go", driver: DriverGo, want: "for 1s (ballast's Go driver)."},
		{name: "older reports say nothing", driver: "", want: "for 1s.", absent: []string{"wrk", "Go driver"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := sampleReport().Overhead
			o.Settings.SaturationDriver = tt.driver
			got := o.summary()
			if !strings.Contains(got, tt.want) {
				t.Errorf("%q lacks %q", got, tt.want)
			}
			for _, a := range tt.absent {
				if strings.Contains(got, a) {
					t.Errorf("%q mentions %q", got, a)
				}
			}
		})
	}
}
