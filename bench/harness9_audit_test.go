package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// Audit 9 of the benchmark harness: measurement probes against scripted
// loopback servers. A benchmark that reports wrong numbers is worse than
// none, so each probe pins a figure to what really happened.

// scripted serves handler on loopback until the test ends. stop is closed
// before the server shuts down, so handlers that block on it return.
func scripted(t *testing.T, handler func(ctx *fasthttp.RequestCtx, stop <-chan struct{})) string {
	t.Helper()
	stop := make(chan struct{})
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { handler(ctx, stop) }, Logger: quietLogger{}, CloseOnShutdown: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	// Closing ln too ends a Serve that had not started when Shutdown ran
	// (a test that never connects): Shutdown only closes the listeners
	// Serve has registered.
	t.Cleanup(func() { close(stop); _ = srv.Shutdown(); _ = ln.Close(); <-done })
	return ln.Addr().String()
}

// pause blocks for d or until stop: the scripted server's stall.
func pause(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}

func okJSON(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"ok":true}`)
}

// An upstream that stalls once for 300 ms: every request the open loop
// scheduled during the stall is charged the time it waited (latency from
// its intended send time), not only the few that were on the wire. At
// 500 rps, 15% of a one-second window falls in the stall, so p90 sits
// inside it; a coordinated-omission driver would show a quiet p90.
func TestAudit9OpenLoopChargesAStallToEveryRequestScheduledDuringIt(t *testing.T) {
	var arrivals atomic.Int64
	var stallEnd atomic.Int64 // unix nanos
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, stop <-chan struct{}) {
		if arrivals.Add(1) == 100 {
			stallEnd.Store(time.Now().Add(300 * time.Millisecond).UnixNano())
		}
		if wait := time.Until(time.Unix(0, stallEnd.Load())); wait > 0 {
			pause(wait, stop)
		}
		okJSON(ctx)
	})
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}},
		Rate: 500, Duration: time.Second, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a := res.All
	if a.Requests < 450 || a.Requests > 510 || a.OK != a.Requests {
		t.Fatalf("%d requests, %d ok (%v), want ≈ 500 all ok", a.Requests, a.OK, a.Errors)
	}
	l := a.Latency
	if l.P90 < 50 || l.P99 < 200 || l.Max < 250 {
		t.Errorf("latency %+v: the 300 ms stall is not charged to the requests scheduled during it", l)
	}
	if l.P50 > 200 { // generous: a loaded machine adds latency, never a 300 ms stall to most requests
		t.Errorf("p50 %v ms: the requests outside the stall were charged too", l.P50)
	}
}

// A target slower than the rate: with one connection at 100 rps against a
// 50 ms upstream, the driver cannot send everything on time. It must still
// keep to its schedule and its timeout: every request counts, each is
// bounded by Timeout from its intended send time (an agent's call that has
// waited that long has failed, whether or not it was sent, and counts as
// a timeout), and the run ends about Timeout after the window, instead of
// draining a queue for seconds and reporting 2-second successes under a
// 200 ms timeout.
func TestAudit9SlowTargetKeepsTheScheduleAndItsTimeout(t *testing.T) {
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, stop <-chan struct{}) {
		pause(50*time.Millisecond, stop)
		okJSON(ctx)
	})
	const timeout = 200 * time.Millisecond
	measured := time.Time{}
	start := time.Now()
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}},
		Rate: 100, Connections: 1, Duration: 500 * time.Millisecond, Timeout: timeout,
		OnMeasure: func() { measured = time.Now() }})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	a := res.All
	if a.Requests < 45 || a.Requests > 51 {
		t.Errorf("%d requests, want all 50 scheduled ones counted", a.Requests)
	}
	if took > 500*time.Millisecond+timeout+2*time.Second { // draining the queue would take 2.5 s
		t.Errorf("the run took %v for a 500 ms window with a %v timeout", took, timeout)
	}
	if a.Latency.Max > float64((timeout + 500*time.Millisecond).Milliseconds()) { // late requests used to report 2 s
		t.Errorf("max latency %v ms with a %v timeout: a request outlived its timeout", a.Latency.Max, timeout)
	}
	if a.Errors["timeout"] == 0 || a.OK+a.Errors["timeout"] != a.Requests {
		t.Errorf("%d ok, errors %v: want the requests late beyond their timeout counted as timeouts", a.OK, a.Errors)
	}
	if a.OK == 0 || a.OK > 20 {
		t.Errorf("%d ok: a 50 ms target on one connection serves about 14 in 700 ms", a.OK)
	}
	if measured.IsZero() {
		t.Error("OnMeasure was not called")
	}
}

// One request of the window hangs until its timeout: the open-loop rps is
// still the rate the target kept up with, not the requests divided by a
// window stretched to the hung request's timeout.
func TestAudit9RPSIsNotDilutedByATailTimeout(t *testing.T) {
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, stop <-chan struct{}) {
		if string(ctx.Request.Header.Peek("X-Bench-Op")) == "get-95" {
			<-stop
			return
		}
		okJSON(ctx)
	})
	wl := []Workload{{Name: "get", Path: "/", KeyHeader: "X-Bench-Op"}}
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: wl,
		Rate: 200, Duration: 500 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.All.Errors["timeout"] != 1 || res.All.Requests < 95 {
		t.Fatalf("%+v: want get-95 timed out", res.All)
	}
	if res.RPS < 100 || res.RPS > 230 { // diluted, it was 67
		t.Errorf("open-loop rps %.1f for a target that answered 99 of 100 requests at 200 rps", res.RPS)
	}
	if res.Elapsed < time.Second {
		t.Errorf("elapsed %v: it runs to the end of the last request", res.Elapsed)
	}
}

// The reported percentiles match a sorted-slice reference (nearest rank)
// within the histogram's 3 significant digits, per workload and merged.
func TestAudit9PercentilesMatchASortedReference(t *testing.T) {
	r := newDraw(9, []byte("latency"), 0)
	a, b := newTally(), newTally()
	var all []int64
	for i := range 20011 {
		// Log-uniform from 20 µs to 2 s, with a slow tail in one tally.
		us := int64(20 * math.Exp(r.float()*math.Log(1e5)))
		tt := a
		if i%3 == 0 {
			tt, us = b, us*3
		}
		tt.record(time.Duration(us)*time.Microsecond, "")
		all = append(all, us)
	}
	merged := newTally()
	merged.hist.Merge(a.hist)
	merged.hist.Merge(b.hist)
	slices.Sort(all)
	ref := func(q float64) float64 {
		rank := int(q/100*float64(len(all)) + 0.5)
		rank = min(max(rank, 1), len(all))
		return float64(all[rank-1]) / 1000
	}
	got := merged.result("all").Latency
	var sum int64
	for _, v := range all {
		sum += v
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"p50", got.P50, ref(50)}, {"p90", got.P90, ref(90)}, {"p99", got.P99, ref(99)}, {"p99.9", got.P999, ref(99.9)},
		{"max", got.Max, float64(all[len(all)-1]) / 1000}, {"mean", got.Mean, float64(sum) / float64(len(all)) / 1000}} {
		if math.Abs(c.got-c.want) > c.want*0.002+0.001 {
			t.Errorf("%s = %v ms, sorted reference %v ms", c.name, c.got, c.want)
		}
	}
}

// Errors are classed by what the agent saw, for every fault a real
// upstream produces: statuses by class, a refused 2xx body as invalid,
// resets, garbage and short bodies as transport, silence as timeout.
func TestAudit9ClassifiesEveryKindOfFailure(t *testing.T) {
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, stop <-chan struct{}) {
		raw := func(s string) {
			_, _ = ctx.Conn().Write([]byte(s))
			_ = ctx.Conn().Close()
		}
		switch string(ctx.Path()) {
		case "/ok":
			okJSON(ctx)
		case "/302":
			ctx.Redirect("/ok", 302)
		case "/429":
			ctx.Response.Header.Set("Retry-After", "1")
			ctx.SetStatusCode(429)
		case "/500":
			ctx.SetStatusCode(500)
		case "/503":
			ctx.SetStatusCode(503)
		case "/malformed":
			ctx.SetContentType("application/json")
			ctx.SetBodyString(`{"id":"x","choi`)
		case "/reset":
			reset(ctx.Conn())
		case "/garbage":
			raw("SSH-2.0-OpenSSH\r\n\r\n")
		case "/short":
			raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
		case "/hang":
			<-stop
		}
	})
	valid := func(ct, body []byte) bool { return json.Valid(body) }
	paths := []string{"ok", "302", "429", "500", "503", "malformed", "reset", "garbage", "short", "hang"}
	want := map[string]string{"ok": "", "302": "3xx", "429": "429", "500": "5xx", "503": "5xx", "malformed": "invalid",
		"reset": "transport", "garbage": "transport", "short": "transport", "hang": "timeout"}
	var wl []Workload
	for _, p := range paths {
		wl = append(wl, Workload{Name: p, Path: "/" + p, Valid: valid})
	}
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: wl, Rate: 200, Connections: 32,
		Duration: 200 * time.Millisecond, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Workloads {
		class := want[w.Name]
		if w.Requests == 0 {
			t.Errorf("%s: no request", w.Name)
			continue
		}
		if class == "" && (w.OK != w.Requests || len(w.Errors) != 0) || class != "" && (w.OK != 0 || w.Errors[class] != w.Requests) {
			t.Errorf("%s: %d requests, %d ok, errors %v; want all %q", w.Name, w.Requests, w.OK, w.Errors, class)
		}
	}
}

// The standard profile through the real upstream over a whole run: the
// driver's error classes match the faults the upstream says it injected
// one for one, and a second run with the same seed after a reset draws
// exactly the same faults.
func TestAudit9FaultsOverARunAreHonouredAndRepeatable(t *testing.T) {
	p, err := NamedProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	p.HangFor = 5 * time.Second // ended by the upstream's Shutdown
	_, addr := serve(t, UpstreamConfig{Profile: p, Seed: 3})
	admin := testClient(t, addr)
	valid := func(ct, body []byte) bool { return bytes.Contains(ct, []byte("json")) && json.Valid(body) }
	run := func() (LoadResult, Counters) {
		if err := ResetCounters(admin, addr); err != nil {
			t.Fatal(err)
		}
		wl := []Workload{{Name: "get", Path: "/v1/items/1", KeyHeader: "X-Bench-Op", Valid: valid}}
		res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: wl,
			Rate: 600, Connections: 256, Duration: time.Second, Timeout: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		c, err := FetchCounters(admin, addr)
		if err != nil {
			t.Fatal(err)
		}
		return res, c
	}
	first, c1 := run()
	a := first.All
	f := c1.Faults
	if c1.Requests != a.Requests {
		t.Fatalf("the upstream saw %d requests, the driver sent %d", c1.Requests, a.Requests)
	}
	for class, n := range map[string]int64{"5xx": f["503"], "429": f["429"], "invalid": f["malformed"], "transport": f["reset"], "timeout": f["hang"]} {
		if a.Errors[class] != n {
			t.Errorf("driver counted %d %s, the upstream injected %d (faults %v, errors %v)", a.Errors[class], class, n, f, a.Errors)
		}
	}
	if a.OK != f["none"] {
		t.Errorf("driver counted %d ok, the upstream answered %d without a fault", a.OK, f["none"])
	}
	for name, pct := range map[string]float64{"503": 10, "429": 10, "malformed": 5, "reset": 5, "hang": 2, "none": 68} {
		if got := 100 * float64(f[name]) / float64(c1.Requests); math.Abs(got-pct) > 4 {
			t.Errorf("%s: %.1f%% of %d requests, the profile says %.0f%%", name, got, c1.Requests, pct)
		}
	}
	_, c2 := run()
	if fmt.Sprint(c1.Faults) != fmt.Sprint(c2.Faults) {
		t.Errorf("same seed, different faults:\n%v\n%v", c1.Faults, c2.Faults)
	}
}

// Attempts of one operation draw independently: under the standard
// profile a retry fails as often as a first try (32%), and both fail
// about 0.32² of the time, so retries through a proxy meet the documented
// fault rate rather than a correlated one.
func TestAudit9RetriesDrawIndependentFaults(t *testing.T) {
	p, err := NamedProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	const n = 100_000
	var first, second, both int
	for i := range n {
		key := []byte("model-" + strconv.Itoa(i))
		d0, d1 := newDraw(1, key, 0), newDraw(1, key, 1)
		f0, f1 := p.pick(d0.float()*100, false) != faultNone, p.pick(d1.float()*100, false) != faultNone
		if f0 {
			first++
		}
		if f1 {
			second++
		}
		if f0 && f1 {
			both++
		}
	}
	for name, c := range map[string]struct{ got, want float64 }{
		"first": {float64(first) / n, 0.32}, "second": {float64(second) / n, 0.32}, "both": {float64(both) / n, 0.32 * 0.32}} {
		if math.Abs(c.got-c.want) > 0.01 {
			t.Errorf("%s attempt(s) failing: %.4f, want %.4f", name, c.got, c.want)
		}
	}
}

// The chaos table's duplicates and upstream attempts come from the
// measured operations only (warm-up keys and other workloads excluded),
// and a duplicate is every effect beyond the first for one key.
func TestAudit9ChaosCountsDuplicatesPerMeasuredOperation(t *testing.T) {
	lr := LoadResult{Workloads: []WorkloadResult{
		{Name: "get", Requests: 3, OK: 2},
		{Name: "keyed", Requests: 2, OK: 2},
	}}
	c := Counters{Keys: map[string]KeyCount{
		"get-0": {Arrivals: 3, Effects: 3}, "get-3": {Arrivals: 1, Effects: 1}, "get-6": {Arrivals: 2, Effects: 0},
		"keyed-1": {Arrivals: 4, Effects: 1}, "keyed-4": {Arrivals: 1, Effects: 1},
		"warm-get-9": {Arrivals: 5, Effects: 5}, "warm-keyed-8": {Arrivals: 2, Effects: 2},
	}}
	ct := chaosTarget("ballast", lr, c)
	g, k := ct.Workloads[0], ct.Workloads[1]
	if g.Duplicates != 2 || g.UpstreamAttempts != 6 || math.Abs(g.SuccessRate-2.0/3) > 1e-9 {
		t.Errorf("get: %+v, want 2 duplicates, 6 attempts, 2/3 success", g)
	}
	if k.Duplicates != 0 || k.UpstreamAttempts != 5 || k.SuccessRate != 1 {
		t.Errorf("keyed: %+v, want 0 duplicates, 5 attempts, full success", k)
	}
}

// ReadProcUsage counts the CPU of children that have already exited: a
// process under test that forks workers (nginx respawning one, a shell
// running a helper) must not lose their CPU, or the window's CPU could
// even go backwards. The shell reports its children's CPU with `times`.
func TestAudit9ProcUsageIncludesExitedChildren(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", `sh -c 'i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done'; times; read x`)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	var lines []string
	for len(lines) < 2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 2 {
		t.Fatalf("times printed %q", lines)
	}
	// "0m0.412000s 0m0.004000s": the children's user and system time.
	var children time.Duration
	for _, f := range strings.Fields(lines[1]) {
		m, s, ok := strings.Cut(strings.TrimSuffix(f, "s"), "m")
		mins, err1 := strconv.Atoi(m)
		secs, err2 := strconv.ParseFloat(s, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("times line %q", lines[1])
		}
		children += time.Duration(mins)*time.Minute + time.Duration(secs*float64(time.Second))
	}
	if children < 50*time.Millisecond {
		t.Fatalf("the child burnt only %v of CPU: the probe means nothing", children)
	}
	u, err := ReadProcUsage(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU < children-20*time.Millisecond {
		t.Errorf("process tree CPU %v, but its exited child alone used %v", u.CPU, children)
	}
}

// The chaos upstream is usable on its own: hostile requests (a 4 KiB key,
// a key of invalid UTF-8, a body claiming a stream, garbage on the wire,
// a method it does not expect, a half-sent request) neither crash it nor
// spoil its counters, and it answers the next ordinary request.
func TestAudit9UpstreamSurvivesHostileInput(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{Profile: Profile{Error503: 50}, StreamEvents: 2})
	c := testClient(t, addr)
	long := strings.Repeat("k", 3000)
	for _, h := range [][]string{{"Idempotency-Key", long}, {"X-Bench-Op", "\xff\xfe"}, {"X-Bench-Op", `"},"keys":{`}} {
		if _, err := call(t, c, "POST", addr, "/v1/chat/completions", `{"stream":true,"stream": true}`, time.Second, h...); err != nil {
			t.Errorf("%q: %v", h[0], err)
		}
	}
	for _, raw := range []string{"\x00\x01\x02\r\n\r\n", "BREW /v1/x HTTP/1.1\r\nHost: x\r\n\r\n", "POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write([]byte(raw))
		_ = conn.(*net.TCPConn).CloseWrite()
		_, _ = bufio.NewReader(conn).ReadString(0)
		_ = conn.Close()
	}
	resp, err := call(t, c, "GET", addr, "/v1/items/1", "", time.Second, "X-Bench-Op", "after")
	if err != nil || (resp.StatusCode() != 200 && resp.StatusCode() != 503) {
		t.Fatalf("after hostile input: %v %v", resp.StatusCode(), err)
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if got.Keys[long].Arrivals != 1 || got.Keys["after"].Arrivals != 1 || len(got.Keys) != 4 {
		t.Errorf("counters after hostile input: %d keys, %+v", len(got.Keys), got.Keys["after"])
	}
}

// The scenario options refuse an answer size the upstream could never
// build (the upstream child would crash allocating it) before starting
// anything.
func TestAudit9OptionsRefuseAnImpossibleSize(t *testing.T) {
	for _, size := range []int{MaxSize + 1, math.MaxInt} {
		if _, err := (Options{Exe: "/nonexistent", Size: size}).withDefaults(1); !errors.Is(err, ErrLoad) {
			t.Errorf("size %d: err = %v, want ErrLoad", size, err)
		}
	}
	if o, err := (Options{Exe: "/nonexistent", Size: MaxSize}).withDefaults(1); err != nil || o.Size != MaxSize {
		t.Errorf("size %d: %v", MaxSize, err)
	}
}

// Scenarios against real children (built once): a target that dies in
// the middle of its run is an error naming it, never a table of refused
// connects; `bench upstream` refuses an impossible size instead of
// panicking.
func TestAudit9Children(t *testing.T) {
	exe := buildBallast(t)
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	// The wrapper records each ballast child's pid ($$ survives exec).
	wrapper := filepath.Join(dir, "ballast-wrapper")
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = run ]; then echo $$ >> %s; fi\nexec %s \"$@\"\n", pids, exe)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := Options{Exe: wrapper, Duration: 300 * time.Millisecond, Warmup: -1, Saturation: -1, Rate: 100,
		Connections: 4, Timeout: 500 * time.Millisecond}

	t.Run("chaos", func(t *testing.T) {
		o := opts
		o.Progress = &killOnLine{t: t, line: "chaos: ballast open loop", pids: pids}
		res, err := Chaos(context.Background(), o)
		if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "ballast") {
			t.Errorf("ballast killed during its chaos run: err = %v, result %+v", err, res)
		}
	})
	t.Run("overhead", func(t *testing.T) {
		o := opts
		o.Targets = []string{TargetDirect, TargetBallast}
		o.Progress = &killOnLine{t: t, line: "ballast open loop at", pids: pids}
		res, err := Overhead(context.Background(), o)
		if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "ballast exited") {
			t.Errorf("ballast killed during its open loop: err = %v, result %+v", err, res)
		}
	})
	t.Run("state", func(t *testing.T) {
		o := opts
		o.Targets = []string{StoreMemory}
		o.Progress = &killOnLine{t: t, line: "state: memory closed loop", pids: pids}
		res, err := State(context.Background(), o)
		if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "ballast") {
			t.Errorf("ballast killed during its state run: err = %v, result %+v", err, res)
		}
	})
	t.Run("soak", func(t *testing.T) {
		o := opts
		o.Progress = &killOnLine{t: t, line: "open loop at", pids: pids}
		res, err := Soak(context.Background(), o)
		if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "soak exited") {
			t.Errorf("ballast killed during its soak: err = %v, result %+v", err, res)
		}
	})
	t.Run("upstream size", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, "bench", "upstream", "--listen", "127.0.0.1:0", "--size", strconv.Itoa(math.MaxInt))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || strings.Contains(string(out), "panic") || !strings.Contains(string(out), "--size") {
			t.Errorf("bench upstream --size MaxInt: %v\n%s", err, out)
		}
	})
}

// killOnLine is a Progress writer that SIGKILLs the last ballast child
// recorded in pids when the scenario prints line: the target dies at the
// start of its measured run.
type killOnLine struct {
	t    *testing.T
	line string
	pids string
	mu   sync.Mutex
	done bool
}

func (k *killOnLine) Write(b []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.done && strings.Contains(string(b), k.line) {
		k.done = true
		data, err := os.ReadFile(k.pids)
		fields := strings.Fields(string(data))
		if err != nil || len(fields) == 0 {
			k.t.Errorf("no ballast pid recorded: %v", err)
			return len(b), nil
		}
		pid, err := strconv.Atoi(fields[len(fields)-1])
		if err != nil {
			k.t.Errorf("pid %q: %v", fields[len(fields)-1], err)
			return len(b), nil
		}
		if p, err := os.FindProcess(pid); err != nil {
			k.t.Errorf("find %d: %v", pid, err)
		} else if err := p.Kill(); err != nil {
			k.t.Errorf("kill %d: %v", pid, err)
		}
	}
	return len(b), nil
}

// The CPU snapshot taken when the window opens (OnMeasure scans /proc: a
// few milliseconds on a busy machine, twice per target) must not hold up
// the open loop's schedule, or its time is charged to the requests due
// meanwhile as if the target had stalled, and lands in p99.9. Here the
// snapshot does not return until the target has received 20 more
// requests: a schedule it held up would send none, and the snapshot would
// give up after 10 s. It still completes before RunLoad returns.
func TestAudit9SnapshotAtTheWindowDoesNotStallTheSchedule(t *testing.T) {
	var arrived, target atomic.Int64
	reached := make(chan struct{})
	var once sync.Once
	addr := scripted(t, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
		if n, want := arrived.Add(1), target.Load(); want > 0 && n >= want {
			once.Do(func() { close(reached) })
		}
		okJSON(ctx)
	})
	var snapshotted, sentMeanwhile atomic.Bool
	var calledAt atomic.Int64
	start := time.Now()
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}},
		Rate: 500, Duration: 600 * time.Millisecond, Warmup: 100 * time.Millisecond, Timeout: 10 * time.Second,
		OnMeasure: func() {
			calledAt.Store(int64(time.Since(start)))
			target.Store(arrived.Load() + 20)
			select {
			case <-reached:
				sentMeanwhile.Store(true)
			case <-time.After(10 * time.Second):
			}
			snapshotted.Store(true)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !snapshotted.Load() {
		t.Error("RunLoad returned before OnMeasure finished")
	}
	if !sentMeanwhile.Load() {
		t.Error("no requests were sent while the snapshot ran: it held up the schedule")
	}
	// The snapshot marks the end of the warm-up: CPU before it is not
	// charged to the measured requests.
	if at := time.Duration(calledAt.Load()); at < 100*time.Millisecond {
		t.Errorf("OnMeasure called %v after the start, before the 100ms warm-up ended", at)
	}
	if a := res.All; a.OK != a.Requests {
		t.Errorf("%d/%d ok", a.OK, a.Requests)
	}
}

// The Anthropic reset instants of a 429 point RetryAfter ahead like every
// other hint (bench/README.md): never into the past (a 100 ms hint
// truncated to the second tells an Anthropic client it may already
// retry), nor a second beyond it (rounded up to whole seconds, they made
// ballast's cool-down, which honours the longest hint, wait up to ten
// times the profile's hint, and the chaos scenario's latency with it).
func TestAudit9AnthropicResetIsNeverInThePast(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{Profile: Profile{RateLimited: 100, RetryAfter: 100 * time.Millisecond}})
	c := testClient(t, addr)
	for i := range 20 {
		sent := time.Now()
		resp, err := call(t, c, "GET", addr, "/v1/items/1", "", time.Second, "X-Bench-Op", "op-"+strconv.Itoa(i))
		if err != nil || resp.StatusCode() != 429 {
			t.Fatalf("got %d %v, want 429", resp.StatusCode(), err)
		}
		for _, h := range []string{"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"} {
			reset, err := time.Parse(time.RFC3339, string(resp.Header.Peek(h)))
			if err != nil || reset.Before(sent.Add(100*time.Millisecond).Truncate(time.Millisecond)) || reset.After(time.Now().Add(100*time.Millisecond+time.Millisecond)) {
				t.Fatalf("%s = %q (%v) for a request sent at %s with a 100ms hint", h, resp.Header.Peek(h), err, sent.UTC().Format(time.RFC3339Nano))
			}
		}
	}
}
