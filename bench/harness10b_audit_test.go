package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Audit 10b of the benchmark harness: every figure of the tables in the
// JSON, units in the JSON, --seed 0, and a smoke run of `ballast bench all`.

// roundsWithNginx is two rounds of direct, bare, ballast and nginx; in
// the second, nginx skipped the closed loop (its saturation ratio is "–").
func roundsWithNginx() *OverheadResult {
	o := &OverheadResult{Settings: Options{Duration: time.Second, Rate: 2000, Connections: 64, Size: 1024, Saturation: time.Second, Rounds: 2}.settings()}
	o.Settings.Rounds = 2
	for r, in := range []struct{ cpu, sat, p99 [3]float64 }{
		{[3]float64{20, 40, 44}, [3]float64{100e3, 50e3, 55e3}, [3]float64{0.2, 0.4, 0.5}},
		{[3]float64{20, 40, 30}, [3]float64{100e3, 50e3, 45e3}, [3]float64{0.2, 0.4, 0.3}},
	} {
		round := roundOf(in.cpu, in.sat, in.p99, 20<<20)
		nginx := round[1]
		nginx.Name, nginx.CPUPer1k = TargetNginx, 25+float64(r)
		nginx.Open.All.Latency = Percentiles{P50: 0.15, P99: 0.35 + float64(r)*0.01}
		if r == 1 {
			nginx.Saturation = nil
		}
		o.Rounds = append(o.Rounds, append(round, nginx))
	}
	o.summarise()
	return o
}

// markdownTables are the tables of a Markdown document, each as its rows
// of cells (the header first, the --- line left out). A row whose cell
// count differs from its header's is an error.
func markdownTables(md string) ([][][]string, error) {
	var tables [][][]string
	var cur [][]string
	for i, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			if cur != nil {
				tables, cur = append(tables, cur), nil
			}
			continue
		}
		if !strings.HasSuffix(line, " |") {
			return nil, fmt.Errorf("line %d: a table row not closed: %q", i+1, line)
		}
		cells := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "| "), " |"), " | ")
		if cur == nil {
			cur = [][]string{cells}
			continue
		}
		if len(cur) == 1 && strings.Trim(line, "|- ") == "" {
			if strings.Count(line, "---") != len(cur[0]) {
				return nil, fmt.Errorf("line %d: separator of %d columns under %d", i+1, strings.Count(line, "---"), len(cur[0]))
			}
			continue
		}
		if len(cells) != len(cur[0]) {
			return nil, fmt.Errorf("line %d: %d cells under a header of %d: %q", i+1, len(cells), len(cur[0]), line)
		}
		cur = append(cur, cells)
	}
	if cur != nil {
		tables = append(tables, cur)
	}
	return tables, nil
}

// roundsTableOf finds the per-round table (its header starts "round").
func roundsTableOf(t *testing.T, md string) [][]string {
	t.Helper()
	tables, err := markdownTables(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb[0][0] == "round" {
			return tb
		}
	}
	t.Fatalf("no rounds table in:\n%s", md)
	return nil
}

// checkRoundsTableMatchesJSON asserts that every cell of the per-round
// table is the figure of rounds_versus in the JSON, read back.
func checkRoundsTableMatchesJSON(t *testing.T, md string, js []byte) {
	t.Helper()
	var back struct {
		Overhead struct {
			RoundsVersus []RoundVersus `json:"rounds_versus"`
		} `json:"overhead"`
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	tb := roundsTableOf(t, md)
	rvs := back.Overhead.RoundsVersus
	if len(tb)-1 != len(rvs) || len(rvs) == 0 {
		t.Fatalf("%d table rows, %d rounds in the JSON:\n%s\n%s", len(tb)-1, len(rvs), md, js)
	}
	header := tb[0]
	for i, rv := range rvs {
		row := tb[i+1]
		cell := func(col string) string {
			for j, h := range header {
				if h == col {
					return row[j]
				}
			}
			t.Fatalf("no column %q in %v", col, header)
			return ""
		}
		if cell("round") != fmt.Sprint(rv.Round) || cell("ballast CPU ms / 1k") != fmt.Sprintf("%.1f", rv.BallastCPUPer1k) {
			t.Errorf("round %d: table %v, JSON %+v", i+1, row, rv)
		}
		if rv.BallastAdded == nil || cell("added p99 ballast") != fmtAdded(rv.BallastAdded.P99) {
			t.Errorf("round %d: added p99 ballast %q, JSON %+v", rv.Round, cell("added p99 ballast"), rv.BallastAdded)
		}
		names := 0
		for _, h := range header {
			if strings.HasPrefix(h, "CPU ×") {
				names++
			}
		}
		if len(rv.Versus) != names {
			t.Errorf("round %d: %d proxies in the JSON, %d in the table", rv.Round, len(rv.Versus), names)
		}
		for _, v := range rv.Versus {
			if v.Added == nil {
				t.Fatalf("round %d %s: no added latency in the JSON", rv.Round, v.Name)
			}
			for col, want := range map[string]string{
				"CPU ×" + v.Name:        fmtRatio(v.CPURatio),
				"saturation ×" + v.Name: fmtRatio(v.SaturationRatio),
				"added p99 " + v.Name:   fmtAdded(v.Added.P99),
			} {
				if got := cell(col); got != want {
					t.Errorf("round %d %q: table %q, JSON gives %q", rv.Round, col, got, want)
				}
			}
		}
	}
}

// The per-round table's figures (ballast's CPU and saturation as
// multiples of each other proxy's, and the added latencies) are in the
// JSON as rounds_versus, and the table shows exactly the JSON's figures,
// "–" where a ratio is 0. They were only in the table: the JSON had the
// raw rounds and a reader had to redo the arithmetic.
func TestHarness10bRoundsRatiosAreInTheJSON(t *testing.T) {
	o := roundsWithNginx()
	rep := &Report{Overhead: o}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(js.Bytes(), []byte(`"rounds_versus"`)) {
		t.Fatalf("no rounds_versus in the JSON:\n%s", js.String())
	}
	checkRoundsTableMatchesJSON(t, string(rep.Markdown("")), js.Bytes())

	// The figures themselves, against the rounds' raw measurements.
	rv := o.RoundsVersus
	if len(rv) != 2 || rv[0].Round != 1 || rv[1].Round != 2 || len(rv[0].Versus) != 2 ||
		rv[0].Versus[0].Name != TargetBare || rv[0].Versus[1].Name != TargetNginx {
		t.Fatalf("rounds_versus %+v", rv)
	}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if v := rv[0].Versus[0]; !near(v.CPURatio, 44.0/40) || !near(v.SaturationRatio, 55e3/50e3) || !near(v.Added.P99, 0.2) {
		t.Errorf("round 1 vs bare: %+v", v)
	}
	if v := rv[1].Versus[1]; !near(v.CPURatio, 30.0/26) || v.SaturationRatio != 0 || !near(v.Added.P99, 0.36-0.2) || !near(rv[1].BallastAdded.P99, 0.1) {
		t.Errorf("round 2 vs nginx (no closed loop): %+v, ballast added %+v", v, rv[1].BallastAdded)
	}
	if row := roundsTableOf(t, string(rep.Markdown("")))[2]; row[5] != "–" {
		t.Errorf("round 2's saturation ×nginx is %q, want –", row[5])
	}

	// The terminal table shows the same cells.
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	md := roundsTableOf(t, string(rep.Markdown("")))
	for _, row := range md[1:] {
		if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(strings.Join(row, "  ")) + `\s*$`).MatchString(
			regexp.MustCompile(` {2,}`).ReplaceAllString(text.String(), "  ")) {
			t.Errorf("the terminal table lacks the row %v:\n%s", row, text.String())
		}
	}

	// Without direct there are no added latencies, and the JSON says none.
	noDirect := &OverheadResult{Targets: o.Targets[1:], Rounds: [][]OverheadTarget{o.Rounds[0][1:], o.Rounds[1][1:]}}
	for _, v := range noDirect.ballastVersus() {
		if v.BallastAdded != nil || v.Versus[0].Added != nil {
			t.Errorf("added latency without direct: %+v", v)
		}
	}
	// One round: no per-round figures.
	one := &OverheadResult{Rounds: [][]OverheadTarget{roundOf([3]float64{1, 2, 3}, [3]float64{1, 2, 3}, [3]float64{1, 2, 3}, 1)}}
	one.summarise()
	if one.RoundsVersus != nil || len(one.Targets) != 3 {
		t.Errorf("one round: %+v", one)
	}
	(&OverheadResult{}).summarise() // no rounds: no panic
}

// Durations in the JSON say their unit: seconds with an _s suffix, never
// a bare time.Duration (nanoseconds with no unit: "elapsed": 9999706987).
// A report read back has the same durations.
func TestHarness10bJSONDurationsAreSeconds(t *testing.T) {
	lr := LoadResult{Mode: "open", TargetRate: 200, Elapsed: 9999706987, RPS: 200, Workloads: []WorkloadResult{}}
	p := Profile{Name: "x", LatencyFixed: 3 * time.Millisecond, LatencyExpMean: 1500 * time.Microsecond, RetryAfter: 100 * time.Millisecond, HangFor: time.Minute, Error503: 10}
	rep := &Report{Overhead: &OverheadResult{Targets: []OverheadTarget{{Name: TargetDirect, Open: lr, Saturation: &lr}}},
		Chaos: &ChaosResult{Profile: p, Targets: []ChaosTarget{}}}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"elapsed_s": 9.999706987`, `"latency_fixed_s": 0.003`, `"latency_exp_mean_s": 0.0015`,
		`"retry_after_s": 0.1`, `"hang_for_s": 60`, `"error_503_pct": 10`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
	for _, stale := range []string{`"elapsed":`, `"latency_fixed":`, `"retry_after":`, `"hang_for":`, `"latency_exp_mean":`} {
		if strings.Contains(js.String(), stale) {
			t.Errorf("JSON still has %s", stale)
		}
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Overhead.Targets[0]; got.Open.Elapsed != lr.Elapsed || got.Saturation.Elapsed != lr.Elapsed || got.Open.RPS != 200 {
		t.Errorf("read back: %+v", got)
	}
	if back.Chaos.Profile != p {
		t.Errorf("profile read back %+v, want %+v", back.Chaos.Profile, p)
	}
}

// The committed bench/harness.json is in the current format (every key
// known, units included, re-encoded byte for byte), and RESULTS.md's
// harness section is what the generator makes of it: a reader of either
// sees the same figures.
func TestHarness10bCommittedReportIsCurrent(t *testing.T) {
	js, err := os.ReadFile(JSONFile)
	if err != nil {
		t.Fatal(err)
	}
	rep := decodeStrict(t, js)
	var again bytes.Buffer
	if err := rep.WriteJSON(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), js) {
		t.Errorf("bench/%s does not re-encode to itself: it is not in the current format", JSONFile)
	}
	md, err := os.ReadFile(ResultsFile)
	if err != nil {
		t.Fatal(err)
	}
	plot := ""
	if rep.Overhead != nil {
		plot = PlotFile
	}
	if got, want := generatedSection(t, md), string(rep.Markdown(plot)); got != want {
		t.Errorf("bench/%s's harness section is not generated from bench/%s:\n--- got\n%s\n--- want\n%s", ResultsFile, JSONFile, got, want)
	}
}

// decodeStrict reads a report, refusing keys it does not know.
func decodeStrict(t *testing.T, js []byte) *Report {
	t.Helper()
	var rep Report
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("report: %v", err)
	}
	return &rep
}

// generatedSection is the text between RESULTS.md's markers, as
// SpliceSection wrote it; the markers must appear once each, in order.
func generatedSection(t *testing.T, md []byte) string {
	t.Helper()
	s := string(md)
	if strings.Count(s, MarkerBegin) != 1 || strings.Count(s, MarkerEnd) != 1 {
		t.Fatalf("markers: %d begin, %d end", strings.Count(s, MarkerBegin), strings.Count(s, MarkerEnd))
	}
	b, e := strings.Index(s, MarkerBegin+"\n"), strings.Index(s, "\n"+MarkerEnd)
	if b < 0 || e < b {
		t.Fatalf("markers out of order or not on their own lines")
	}
	return s[b+len(MarkerBegin)+1 : e]
}

// An explicit seed of 0 is a seed: it was silently replaced by 1 (zero
// meant "default" in Options), while `bench upstream --seed 0` used 0.
// Every scenario's upstream now gets the seed as given, 0 and negative
// ones included.
func TestHarness10bSeedZeroIsASeed(t *testing.T) {
	for _, seed := range []int64{0, -7, 1} {
		o, err := (Options{Exe: "/nonexistent", Seed: seed}).withDefaults(1)
		if err != nil || o.Seed != seed || o.settings().Seed != seed {
			t.Errorf("seed %d became %d (%v)", seed, o.Seed, err)
		}
		args := strings.Join(UpstreamArgs(UpstreamConfig{Size: 1, Seed: seed}), " ")
		if !strings.Contains(args, fmt.Sprintf("--seed %d ", seed)) && !strings.HasSuffix(args, fmt.Sprintf("--seed %d", seed)) {
			t.Errorf("upstream args %q lack --seed %d", args, seed)
		}
	}
	// Seed 0 draws differently from seed 1, so reporting 0 and running 1
	// would be a lie.
	same := 0
	for n := range uint64(64) {
		a, b := newDraw(0, []byte("k"), n), newDraw(1, []byte("k"), n)
		if a.next() == b.next() {
			same++
		}
	}
	if same != 0 {
		t.Errorf("seeds 0 and 1 gave %d identical draws of 64", same)
	}
	exe := buildBallast(t)
	for _, seed := range []string{"0", "-7"} {
		cmd := exec.Command(exe, "bench", "upstream", "--listen", "127.0.0.1:0", "--seed", seed)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err != nil || !strings.Contains(line, "seed "+seed+")") {
			t.Errorf("bench upstream --seed %s: banner %q (%v)", seed, line, err)
		}
	}
}

// `ballast bench all` end to end at tiny durations (a few seconds): the
// files --out writes, harness.json equal to what --json prints and in
// the current format, RESULTS.md's generated section well-formed and
// generated from that JSON, the hand-written parts kept, the per-round
// figures in the JSON, --seed 0 honoured, and nginx, redis and wrk each
// either used or reported as skipped. Once as installed, once with none
// of them on PATH (as on a machine without them).
func TestHarness10bBenchAllSmoke(t *testing.T) {
	exe := buildBallast(t)
	for _, c := range []struct {
		name string
		path string
	}{{"installed", os.Getenv("PATH")}, {"no tools on PATH", t.TempDir()}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			hand := "# results\n\nhand-written before\n\n" + MarkerBegin + "\nold\n" + MarkerEnd + "\n\nhand-written after\n"
			if err := os.WriteFile(filepath.Join(dir, ResultsFile), []byte(hand), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			start := time.Now()
			cmd := exec.CommandContext(ctx, exe, "bench", "all", "--duration", "100ms", "--warmup", "0", "--saturation", "100ms",
				"--rate", "100", "--connections", "4", "--timeout", "500ms", "--rounds", "2", "--seed", "0", "--driver", "go",
				// Streams short enough for 4 connections at 100 a second
				// (CheckStream).
				"--stream-events", "4", "--stream-interval", "2ms",
				"--json", "--out", dir)
			cmd.Env = append(os.Environ(), "PATH="+c.path)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("bench all: %v\n%s", err, stderr.String())
			}
			t.Logf("bench all took %v", time.Since(start).Round(time.Millisecond))

			js, err := os.ReadFile(filepath.Join(dir, JSONFile))
			if err != nil || !bytes.Equal(js, stdout.Bytes()) {
				t.Fatalf("harness.json (%v) differs from --json", err)
			}
			if svg, err := os.ReadFile(filepath.Join(dir, PlotFile)); err != nil || !bytes.Contains(svg, []byte("<svg")) {
				t.Errorf("plot: %v %.40q", err, svg)
			}
			rep := decodeStrict(t, js)
			if rep.Overhead == nil || rep.Chaos == nil || rep.Policies == nil || rep.State == nil || rep.Stream == nil || rep.Soak != nil {
				t.Fatalf("scenarios run: overhead %v chaos %v policies %v state %v stream %v soak %v",
					rep.Overhead != nil, rep.Chaos != nil, rep.Policies != nil, rep.State != nil, rep.Stream != nil, rep.Soak != nil)
			}
			if strings.Contains(string(js), `"elapsed":`) || !strings.Contains(string(js), `"elapsed_s":`) {
				t.Error("harness.json has durations without units")
			}
			for _, tg := range rep.Overhead.Targets {
				if e := tg.Open.Elapsed; e < 50*time.Millisecond || e > 5*time.Second {
					t.Errorf("%s: open-loop elapsed %v read back from elapsed_s", tg.Name, e)
				}
			}
			if rep.Chaos.Settings.Seed != 0 || !strings.Contains(stderr.String(), "seed 0)") {
				t.Errorf("--seed 0 ran as seed %d:\n%s", rep.Chaos.Settings.Seed, stderr.String())
			}
			if rep.Chaos.Profile.RetryAfter != 100*time.Millisecond {
				t.Errorf("chaos profile read back: %+v", rep.Chaos.Profile)
			}

			// nginx, redis-server: used when on PATH, else skipped and said so.
			hasNginx := c.name == "installed" && NginxPath() != ""
			hasRedis := c.name == "installed" && RedisPath() != ""
			if ran := findTarget(rep.Overhead.Targets, TargetNginx) != nil; ran != hasNginx || (rep.Overhead.Skipped[TargetNginx] != "") == hasNginx {
				t.Errorf("nginx on PATH %v: ran %v, skipped %q", hasNginx, ran, rep.Overhead.Skipped[TargetNginx])
			}
			streamNginx := false
			for _, st := range rep.Stream.Targets {
				streamNginx = streamNginx || st.Name == TargetNginx
			}
			if streamNginx != hasNginx || (rep.Stream.Skipped[TargetNginx] != "") == hasNginx {
				t.Errorf("nginx on PATH %v: ran %v in stream, skipped %q", hasNginx, streamNginx, rep.Stream.Skipped[TargetNginx])
			}
			redisRan := false
			for _, st := range rep.State.Targets {
				redisRan = redisRan || st.Name == StoreRedis
			}
			if redisRan != hasRedis || (rep.State.Skipped[StoreRedis] != "") == hasRedis {
				t.Errorf("redis-server on PATH %v: ran %v, skipped %q", hasRedis, redisRan, rep.State.Skipped[StoreRedis])
			}

			md, err := os.ReadFile(filepath.Join(dir, ResultsFile))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(md), "# results\n\nhand-written before\n\n"+MarkerBegin+"\n") ||
				!strings.HasSuffix(string(md), MarkerEnd+"\n\nhand-written after\n") {
				t.Errorf("the hand-written parts of RESULTS.md were not kept:\n%s", md)
			}
			section := generatedSection(t, md)
			if section != string(rep.Markdown(PlotFile)) {
				t.Errorf("RESULTS.md's section is not what harness.json generates:\n%s", section)
			}
			for _, want := range []string{"## Harness: `ballast bench`", "### Overhead", "### Chaos", "### Policies", "### State", "### Streams",
				"(seed 0)", "![open-loop latency percentiles"} {
				if !strings.Contains(section, want) {
					t.Errorf("section lacks %q", want)
				}
			}
			if !hasNginx && !strings.Contains(section, "Skipped nginx: nginx is not on PATH.") {
				t.Errorf("section does not say nginx was skipped")
			}
			if !hasRedis && !strings.Contains(section, "skipped redis: redis-server is not on PATH") {
				t.Errorf("section does not say redis was skipped")
			}
			if regexp.MustCompile(`NaN|[+-]?Inf\b`).MatchString(section) {
				t.Errorf("NaN or Inf in the section")
			}
			tables, err := markdownTables(section)
			if err != nil {
				t.Fatalf("RESULTS.md's section: %v\n%s", err, section)
			}
			// cost, latency, rounds; chaos; stream's cost, latency, rounds;
			// policies, its rounds; state, its rounds.
			if len(tables) != 11 {
				t.Errorf("%d tables in the section, want 11", len(tables))
			}
			if p := rep.Policies; p.Settings.Rounds != 2 || len(p.Rounds) != 2 {
				t.Errorf("policies under --rounds 2: settings %d, %d rounds", p.Settings.Rounds, len(p.Rounds))
			}
			if s := rep.State; s.Settings.Rounds != 2 || len(s.Rounds) != 2 {
				t.Errorf("state under --rounds 2: settings %d, %d rounds", s.Settings.Rounds, len(s.Rounds))
			}
			if s := rep.Stream; s.Settings.Rounds != 2 || len(s.Rounds) != 2 {
				t.Errorf("stream under --rounds 2: settings %d, %d rounds", s.Settings.Rounds, len(s.Rounds))
			}
			checkRoundsTableMatchesJSON(t, section, js)
		})
	}
}
