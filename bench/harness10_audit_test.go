package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// Audit 10 of the benchmark harness: the chaos upstream's memory bound,
// the 429 error class, and the user-facing surface of `ballast bench`
// (flags, --json, --out, `bench upstream` on its own).

// The side-effect counters keep at most MaxKeys keys, the least recently
// seen evicted first, and say how many they dropped: an upstream left
// running under unique keys stays bounded, and a count is never silently
// wrong. Keys still held keep exact counts, and a reset clears the
// eviction count with the rest. Without a bound the map grew forever.
func TestHarness10CountersAreBoundedAndReportEvictions(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{MaxKeys: 50, Profile: Profile{Error503: 50}, Seed: 3})
	c := testClient(t, addr)
	for i := range 120 {
		if _, err := call(t, c, "POST", addr, "/v1/orders", `{}`, time.Second, "Idempotency-Key", "order-"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The most recent key, sent three more times, keeps its full count:
	// an effect for every answer but the 503s (the work was not done).
	for range 3 {
		if _, err := call(t, c, "POST", addr, "/v1/orders", `{}`, time.Second, "Idempotency-Key", "order-119"); err != nil {
			t.Fatal(err)
		}
	}
	effects, p := int64(0), Profile{Error503: 50}
	for i := range 4 {
		if d := newDraw(3, []byte("order-119"), uint64(i)); p.pick(d.float()*100, false) != fault503 {
			effects++
		}
	}
	if effects == 0 || effects == 4 {
		t.Fatalf("seed 3 gives order-119 %d effects in 4 attempts: the probe would not tell a count from a constant", effects)
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Keys) != 50 || got.EvictedKeys != 70 || got.MaxKeys != 50 || got.Requests != 123 {
		t.Fatalf("%d keys, %d evicted, max %d, %d requests; want 50 kept, 70 evicted, max 50, 123 requests",
			len(got.Keys), got.EvictedKeys, got.MaxKeys, got.Requests)
	}
	if _, ok := got.Keys["order-0"]; ok {
		t.Error("the least recently seen key was kept")
	}
	if k := got.Keys["order-119"]; k.Arrivals != 4 || k.Effects != effects {
		t.Errorf("order-119: %+v, want 4 arrivals and %d effects", k, effects)
	}
	if err := ResetCounters(c, addr); err != nil {
		t.Fatal(err)
	}
	if got, _ := FetchCounters(c, addr); got.EvictedKeys != 0 || len(got.Keys) != 0 || got.MaxKeys != 50 {
		t.Errorf("after a reset: %d keys, %d evicted, max %d", len(got.Keys), got.EvictedKeys, got.MaxKeys)
	}

	// The default bound holds too (in process: 100,000 keys is too many
	// for loopback round trips in a unit test).
	u := NewUpstream(UpstreamConfig{})
	for i := range DefaultMaxKeys + 10 {
		ctx := newCtx("/v1/chat/completions", "op-"+strconv.Itoa(i))
		u.handle(ctx)
	}
	if s := u.Counters(); len(s.Keys) != DefaultMaxKeys || s.EvictedKeys != 10 || s.MaxKeys != DefaultMaxKeys {
		t.Errorf("default bound: %d keys, %d evicted, max %d; want %d, 10, %d", len(s.Keys), s.EvictedKeys, s.MaxKeys, DefaultMaxKeys, DefaultMaxKeys)
	}
}

// The chaos scenario sizes the upstream's key bound to its run (one key
// per scheduled request, warm-up included), passes it to the child, and
// if keys were evicted all the same, says under its table that attempts
// and duplicates are lower bounds, in JSON, text and Markdown alike.
func TestHarness10ChaosKeepsEveryKeyOfItsRunOrSaysSo(t *testing.T) {
	o := Options{Rate: 5000, Warmup: time.Second, Duration: time.Minute}
	if n := chaosMaxKeys(o); n < 5000*61 {
		t.Errorf("chaosMaxKeys = %d for %d scheduled requests", n, 5000*61)
	}
	if n := chaosMaxKeys(Options{Rate: 200, Duration: 10 * time.Second}); n != DefaultMaxKeys {
		t.Errorf("a small run lowered the bound to %d", n)
	}
	args := strings.Join(UpstreamArgs(UpstreamConfig{Size: 1024, Seed: 1, MaxKeys: 305_064}), " ")
	if !strings.Contains(args, "--max-keys 305064") {
		t.Errorf("upstream args %q lack the key bound", args)
	}

	lr := LoadResult{Workloads: []WorkloadResult{{Name: "get", Requests: 2, OK: 2}}}
	counters := Counters{Keys: map[string]KeyCount{"get-0": {Arrivals: 1, Effects: 1}}, EvictedKeys: 1234}
	rep := &Report{Chaos: &ChaosResult{Profile: Profile{Name: "standard"}, Targets: []ChaosTarget{
		chaosTarget(TargetDirect, lr, Counters{Keys: counters.Keys}), chaosTarget(TargetBallast, lr, counters)}}}
	var text, js bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	md := string(rep.Markdown(""))
	for name, out := range map[string]string{"text": text.String(), "markdown": md} {
		if !strings.Contains(out, "evicted 1,234 operation keys") || !strings.Contains(out, "lower bounds") || strings.Count(out, "evicted") != 1 {
			t.Errorf("%s lacks the eviction warning for the ballast run only:\n%s", name, out)
		}
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Chaos.Targets[1].EvictedKeys != 1234 || back.Chaos.Targets[0].EvictedKeys != 0 {
		t.Errorf("JSON: %v\n%s", err, js.String())
	}
}

// 429 (rate limited) is its own error class, apart from other client
// errors, in the driver's results, the chaos table and the JSON: a user
// reading a chaos run must see how often the agent was told to wait.
func TestHarness10RateLimitedIsItsOwnErrorClass(t *testing.T) {
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
		switch string(ctx.Path()) {
		case "/429":
			ctx.Response.Header.Set("Retry-After", "1")
			ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
		case "/404":
			ctx.SetStatusCode(fasthttp.StatusNotFound)
		default:
			okJSON(ctx)
		}
	})
	wl := []Workload{{Name: "limited", Path: "/429"}, {Name: "missing", Path: "/404"}}
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: wl, Rate: 200, Duration: 200 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lim, miss := res.Workloads[0], res.Workloads[1]
	if lim.Requests == 0 || lim.Errors["429"] != lim.Requests || lim.Errors["4xx"] != 0 {
		t.Errorf("429s: %d requests, errors %v; want all under 429", lim.Requests, lim.Errors)
	}
	if miss.Requests == 0 || miss.Errors["4xx"] != miss.Requests || miss.Errors["429"] != 0 {
		t.Errorf("404s: %d requests, errors %v; want all under 4xx", miss.Requests, miss.Errors)
	}
	if res.All.Errors["429"] != lim.Requests {
		t.Errorf("merged errors %v", res.All.Errors)
	}
	rep := &Report{Chaos: &ChaosResult{Profile: Profile{Name: "standard"}, Targets: []ChaosTarget{chaosTarget(TargetDirect, res, Counters{})}}}
	var text, js bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	n := strconv.FormatInt(lim.Requests, 10)
	for _, c := range []struct{ name, out, want string }{
		{"text", text.String(), "429=" + n}, {"markdown", string(rep.Markdown("")), "429=" + n}, {"json", js.String(), `"429": ` + n},
	} {
		if !strings.Contains(c.out, c.want) {
			t.Errorf("%s lacks %q:\n%s", c.name, c.want, c.out)
		}
	}
}

// A rate that is not a finite number is refused: NaN silently ran a
// closed loop and +Inf scheduled every request at the start, forever
// (the window never ended).
func TestHarness10RunLoadRefusesANonFiniteRate(t *testing.T) {
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) { okJSON(ctx) })
	for _, rate := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res, err := RunLoad(ctx, LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}}, Rate: rate,
			Connections: 2, Duration: 100 * time.Millisecond, Timeout: 200 * time.Millisecond})
		cancel()
		if !errors.Is(err, ErrLoad) {
			t.Errorf("rate %v: err = %v, %d requests sent (mode %s), want ErrLoad", rate, err, res.All.Requests, res.Mode)
		}
	}
	for _, rate := range []float64{math.NaN(), math.Inf(1)} {
		if _, err := (Options{Exe: "/nonexistent", Rate: rate}).withDefaults(1); !errors.Is(err, ErrLoad) {
			t.Errorf("options rate %v: err = %v, want ErrLoad", rate, err)
		}
	}
}

// chaos keeps rate × timeout requests in flight (one goroutine and one
// connection each): a rate the machine cannot hold that many of is
// refused before any child starts, instead of exhausting memory.
func TestHarness10ChaosRefusesMoreInFlightThanItCanHold(t *testing.T) {
	for _, o := range []Options{{Rate: 1e9}, {Rate: 5000, Timeout: 5 * time.Second}, {Rate: 1e300}} {
		o.Exe = "/nonexistent"
		res, err := Chaos(context.Background(), o)
		if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "in flight") {
			t.Errorf("rate %v timeout %v: err = %v, result %+v", o.Rate, o.Timeout, err, res)
		}
	}
}

// The overhead cost table's "CPU ×direct" is in the JSON too, computed
// with the other ratios against direct (it existed only in the table), and
// the table shows the JSON's figure.
func TestHarness10CPURatioIsInTheJSON(t *testing.T) {
	o := &OverheadResult{Targets: []OverheadTarget{
		{Name: TargetDirect, CPUPer1k: 40},
		{Name: TargetBallast, CPUPer1k: 60},
	}}
	compare(o.Targets)
	if o.Targets[1].CPURatio != 1.5 || o.Targets[0].CPURatio != 0 {
		t.Fatalf("cpu ratios %v %v, want 1.5 for ballast and none for direct", o.Targets[1].CPURatio, o.Targets[0].CPURatio)
	}
	var js bytes.Buffer
	if err := (&Report{Overhead: o}).WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"cpu_ratio": 1.5`) {
		t.Errorf("JSON lacks cpu_ratio (%v):\n%s", err, js.String())
	}
	var text strings.Builder
	if err := o.costTable().text(&text); err != nil || !strings.Contains(text.String(), "1.50×") {
		t.Errorf("cost table:\n%s", text.String())
	}
}

// --out DIR writes what bench/README.md says: harness.json (what --json
// prints), the plot only when overhead ran, and RESULTS.md's section.
func TestHarness10OutWritesWhatTheReadmeSays(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "`DIR/harness-latency.svg` (when overhead ran") {
		t.Error("bench/README.md does not say the plot is written only when overhead ran")
	}
	chaosOnly := &Report{Date: "d", Chaos: &ChaosResult{Profile: Profile{Name: "standard"}}}
	withOverhead := &Report{Date: "d", Overhead: &OverheadResult{Targets: []OverheadTarget{{Name: TargetDirect, Open: LoadResult{All: WorkloadResult{Latency: Percentiles{P50: 1, P90: 2, P99: 3, P999: 4}}}}}}}
	for _, c := range []struct {
		name     string
		rep      *Report
		wantPlot bool
	}{{"chaos only", chaosOnly, false}, {"overhead", withOverhead, true}} {
		dir := t.TempDir()
		if err := c.rep.WriteOut(dir); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var printed bytes.Buffer
		if err := c.rep.WriteJSON(&printed); err != nil {
			t.Fatal(err)
		}
		js, err := os.ReadFile(filepath.Join(dir, JSONFile))
		if err != nil || !bytes.Equal(js, printed.Bytes()) {
			t.Errorf("%s: harness.json differs from --json (%v)", c.name, err)
		}
		_, err = os.Stat(filepath.Join(dir, PlotFile))
		if (err == nil) != c.wantPlot {
			t.Errorf("%s: plot written %v, want %v", c.name, err == nil, c.wantPlot)
		}
		md, err := os.ReadFile(filepath.Join(dir, ResultsFile))
		if err != nil || !bytes.Contains(md, []byte(MarkerBegin)) || bytes.Contains(md, []byte(PlotFile)) != c.wantPlot {
			t.Errorf("%s: RESULTS.md (%v):\n%s", c.name, err, md)
		}
	}
}

// The CLI's user-facing surface, against the built binary: every bad
// flag value is a usage error (exit 2) naming the flag, never a panic, a
// silent default or a run; -h exits 0; soak (not in the CI smokes of
// cmd/ballast) produces valid JSON; `bench upstream` alone behaves as
// bench/README.md documents.
func TestHarness10CLI(t *testing.T) {
	exe := buildBallast(t)
	runCLI := func(t *testing.T, args ...string) (int, string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("%v still running after 20s (it started a run instead of refusing)", args)
		}
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, out.String(), errb.String()
		case errors.As(err, &ee):
			return ee.ExitCode(), out.String(), errb.String()
		}
		t.Fatalf("%v: %v", args, err)
		return 0, "", ""
	}

	t.Run("bad scenario flags", func(t *testing.T) {
		cases := []struct{ scenario, flag, value string }{
			{"chaos", "rate", "NaN"}, {"overhead", "rate", "+Inf"}, {"soak", "rate", "-5"}, {"overhead", "rate", "1e12"},
			{"policies", "connections", "10000000"},
			{"chaos", "duration", "-1s"}, {"policies", "warmup", "-1s"}, {"overhead", "saturation", "-2s"},
			{"soak", "sample-every", "0"}, {"overhead", "connections", "0"}, {"state", "connections", "-3"},
			{"chaos", "size", "0"}, {"overhead", "size", "-1"}, {"overhead", "rounds", "0"},
			{"state", "procs", "-1"}, {"chaos", "timeout", "0"}, {"all", "timeout", "-1s"},
		}
		for _, c := range cases {
			code, stdout, stderr := runCLI(t, "bench", c.scenario, "--"+c.flag, c.value, "--targets", "direct")
			if code != 2 || !strings.Contains(stderr, "--"+c.flag+" ") || strings.Contains(stderr, "panic") || stdout != "" {
				t.Errorf("bench %s --%s %s: exit %d, stderr %q, stdout %q; want exit 2 naming --%s", c.scenario, c.flag, c.value, code, stderr, stdout, c.flag)
			}
		}
	})
	t.Run("bad upstream flags", func(t *testing.T) {
		cases := []struct{ flag, value string }{
			{"size", "0"}, {"size", "-10"}, {"stream-events", "0"}, {"stream-interval", "-1ms"}, {"max-keys", "0"},
			{"latency-fixed", "-1ms"}, {"latency-exp", "-1ms"}, {"retry-after", "-1s"}, {"hang-for", "-1s"},
			{"p500", "NaN"}, {"p503", "-1"}, {"p429", "101"}, {"malformed", "Inf"}, {"reset", "-0.5"}, {"hang", "200"}, {"cut", "NaN"},
		}
		for _, c := range cases {
			code, stdout, stderr := runCLI(t, "bench", "upstream", "--listen", "127.0.0.1:0", "--"+c.flag, c.value)
			if code != 2 || !strings.Contains(stderr, "--"+c.flag+" ") || strings.Contains(stderr, "panic") || strings.Contains(stdout, "http://") {
				t.Errorf("bench upstream --%s %s: exit %d, stderr %q, stdout %q; want exit 2 naming --%s", c.flag, c.value, code, stderr, stdout, c.flag)
			}
		}
	})
	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"bench", "--help"}, {"bench", "chaos", "-h"}, {"bench", "overhead", "--help"}, {"bench", "upstream", "-h"}} {
			code, stdout, stderr := runCLI(t, args...)
			if code != 0 || !strings.Contains(stdout+stderr, "-duration") && !strings.Contains(stdout+stderr, "-listen") {
				t.Errorf("%v: exit %d, output %q", args, code, stdout+stderr)
			}
		}
		_, stdout, _ := runCLI(t, "bench", "--help")
		if !strings.Contains(stdout, "--procs") {
			t.Errorf("bench --help does not list --procs:\n%s", stdout)
		}
		_, top, _ := runCLI(t, "--help")
		for _, scenario := range []string{"overhead", "chaos", "policies", "state", "soak", "all", "upstream"} {
			if !strings.Contains(top, scenario) {
				t.Errorf("ballast --help does not name bench %s:\n%s", scenario, top)
			}
		}
		_, _, stderr := runCLI(t, "bench", "upstream", "-h")
		if !strings.Contains(stderr, "-max-keys") {
			t.Errorf("bench upstream -h does not list --max-keys:\n%s", stderr)
		}
	})
	t.Run("soak smoke", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, "bench", "soak", "--duration", "400ms", "--warmup", "0", "--rate", "50",
			"--connections", "4", "--sample-every", "100ms", "--json")
		var rep Report
		if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || rep.Soak == nil {
			t.Fatalf("bench soak: exit %d, stderr %s\n%s", code, stderr, stdout)
		}
		s := rep.Soak
		if len(s.Samples) < 2 || s.IdleRSS <= 0 || s.Load.All.Requests == 0 || s.Load.All.OK != s.Load.All.Requests || s.Config == "" {
			t.Errorf("soak report %+v", s)
		}
	})
	t.Run("upstream alone", func(t *testing.T) {
		addr := startCLIUpstream(t, exe, "--profile", "standard", "--p503", "0", "--malformed", "0", "--reset", "0", "--hang", "0",
			"--p429", "100", "--stream-events", "3", "--max-keys", "2")
		c := testClient(t, addr)
		// 429s carry every documented hint, the standard profile's 100ms ahead.
		resp, err := call(t, c, "GET", addr, "/v1/items/1", "", time.Second, "X-Bench-Op", "a")
		if err != nil || resp.StatusCode() != 429 {
			t.Fatalf("got %d %v, want 429", resp.StatusCode(), err)
		}
		for h, want := range map[string]string{"Retry-After": "1", "retry-after-ms": "100", "x-ratelimit-reset-requests": "100ms", "x-ratelimit-reset-tokens": "100ms"} {
			if got := string(resp.Header.Peek(h)); got != want {
				t.Errorf("%s = %q, want %q", h, got, want)
			}
		}
		for _, h := range []string{"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"} {
			if _, err := time.Parse(time.RFC3339, string(resp.Header.Peek(h))); err != nil {
				t.Errorf("%s = %q: %v", h, resp.Header.Peek(h), err)
			}
		}
		if !json.Valid(resp.Body()) || !bytes.Contains(resp.Header.ContentType(), []byte("json")) {
			t.Errorf("429 body %q (%s)", resp.Body(), resp.Header.ContentType())
		}
		for _, k := range []string{"b", "c", "d"} {
			if _, err := call(t, c, "GET", addr, "/v1/items/1", "", time.Second, "X-Bench-Op", k); err != nil {
				t.Fatal(err)
			}
		}
		got, err := FetchCounters(c, addr)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Keys) != 2 || got.EvictedKeys != 2 || got.MaxKeys != 2 || got.Faults["429"] != 4 {
			t.Errorf("counters with --max-keys 2 after 4 keys: %+v", got)
		}
	})
	t.Run("upstream streams", func(t *testing.T) {
		addr := startCLIUpstream(t, exe, "--stream-events", "3")
		c := testClient(t, addr)
		for _, r := range []struct{ method, path, body string }{{"GET", "/v1/stream", ""}, {"POST", "/v1/chat/completions", `{"model":"m","stream":true}`}} {
			resp, err := call(t, c, r.method, addr, r.path, r.body, time.Second)
			if err != nil || resp.StatusCode() != 200 || string(resp.Header.ContentType()) != "text/event-stream" {
				t.Fatalf("%s %s: %d %s %v", r.method, r.path, resp.StatusCode(), resp.Header.ContentType(), err)
			}
			events := strings.Split(strings.TrimSpace(string(resp.Body())), "\n\n")
			if len(events) != 4 || events[3] != "data: [DONE]" {
				t.Errorf("%s %s: %d events, want 3 and [DONE]:\n%s", r.method, r.path, len(events), resp.Body())
			}
			for _, e := range events[:3] {
				if !strings.HasPrefix(e, "data: ") || !json.Valid([]byte(strings.TrimPrefix(e, "data: "))) {
					t.Errorf("event %q is not a data: line of JSON", e)
				}
			}
		}
	})
}

// startCLIUpstream runs `exe bench upstream --listen 127.0.0.1:0 args...`
// until the test ends and returns its address, read from its banner.
func startCLIUpstream(t *testing.T, exe string, args ...string) string {
	t.Helper()
	cmd := exec.Command(exe, append([]string{"bench", "upstream", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	m := addrLine.FindStringSubmatch(line)
	if err != nil || m == nil {
		t.Fatalf("no banner (%v): %q %s", err, line, stderr.String())
	}
	return m[1]
}

// lockedBuffer is a bytes.Buffer safe for a child's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
