package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestPolicyVariantsParse(t *testing.T) {
	variants, dropped := acceptedVariants()
	if len(dropped) != 0 {
		t.Fatalf("config.Parse refused variants: %v", dropped)
	}
	var names []string
	for _, v := range variants {
		names = append(names, v.name)
	}
	if got, want := strings.Join(names, ","), strings.Join(PolicyVariantNames(), ","); got != want {
		t.Fatalf("variants %s, want %s", got, want)
	}
	all := variants[len(variants)-1]
	top, policy := all.config()
	for _, want := range []string{"log: {requests: true}", "unsafe_methods", "rate_limit", "validate", "cache", "idempotency"} {
		if !strings.Contains(top+policy, want) {
			t.Errorf("all variant lacks %q:\n%s%s", want, top, policy)
		}
	}
	if strings.Contains(policy, "attempts: 1") {
		t.Errorf("all variant keeps retries off:\n%s", policy)
	}
}

func TestPolicyVariantConfigs(t *testing.T) {
	cases := []struct {
		name      string
		v         policyVariant
		want      []string
		notWant   []string
		logsLines bool
	}{
		{name: "off", v: policyVariants[0], want: []string{"log: {requests: false}", "retry: {attempts: 1}", "breaker: {enabled: false}"}},
		{name: "retry armed", v: policyVariant{name: "retry", armRetry: true, extra: "retry: {unsafe_methods: true}"},
			want: []string{"unsafe_methods"}, notWant: []string{"attempts: 1", "breaker"}},
		{name: "trail", v: policyVariant{name: "trail", logOn: true}, want: []string{"log: {requests: true}", "attempts: 1"}, logsLines: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			top, policy := c.v.config()
			y := string(smallConfig{Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", Upstream: "127.0.0.1:3", Top: top, Policy: policy}.Render())
			for _, w := range c.want {
				if !strings.Contains(y, w) {
					t.Errorf("config lacks %q:\n%s", w, y)
				}
			}
			for _, w := range c.notWant {
				if strings.Contains(y, w) {
					t.Errorf("config has %q:\n%s", w, y)
				}
			}
			if logsRequests(top) != c.logsLines {
				t.Errorf("logsRequests = %v", !c.logsLines)
			}
		})
	}
}

func TestSlope(t *testing.T) {
	cases := []struct {
		name   string
		xs, ys []float64
		want   float64
	}{
		{name: "flat", xs: []float64{1, 2, 3, 4}, ys: []float64{50, 50, 50, 50}, want: 0},
		{name: "rising 2 per minute", xs: []float64{1, 2, 3, 4}, ys: []float64{10, 12, 14, 16}, want: 2},
		{name: "noisy fall", xs: []float64{0, 1, 2, 3}, ys: []float64{9, 8.5, 7, 6.5}, want: -0.9},
		{name: "one point", xs: []float64{1}, ys: []float64{3}, want: 0},
		{name: "same x", xs: []float64{2, 2}, ys: []float64{1, 5}, want: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := slope(c.xs, c.ys); math.Abs(got-c.want) > 1e-9 {
				t.Errorf("slope = %v, want %v", got, c.want)
			}
		})
	}
}

func TestSoakSummaryUsesTheSecondHalf(t *testing.T) {
	mib := int64(1 << 20)
	r := &SoakResult{Samples: []RSSSample{
		{At: 30, RSS: 20 * mib}, {At: 60, RSS: 40 * mib}, // growth while caches fill
		{At: 90, RSS: 41 * mib}, {At: 120, RSS: 41 * mib}, {At: 150, RSS: 42 * mib}, {At: 180, RSS: 42 * mib},
	}}
	r.summarise(180)
	if r.StartRSS != 20*mib || r.MaxRSS != 42*mib || r.EndRSS != 42*mib {
		t.Errorf("start %d max %d end %d", r.StartRSS, r.MaxRSS, r.EndRSS)
	}
	// Second half: t ≥ 90s, 41 → 42 MiB over 1.5 minutes.
	if r.SlopeMiBPerMin <= 0.5 || r.SlopeMiBPerMin > 0.8 {
		t.Errorf("slope %v MiB/min, want ≈ 0.67", r.SlopeMiBPerMin)
	}
}

// UniqueBody must give every request its own valid JSON body.
func TestRunLoadUniqueBodies(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		b := string(ctx.Request.Body())
		mu.Lock()
		dup := seen[b]
		seen[b] = true
		mu.Unlock()
		if dup || !json.Valid([]byte(b)) || !strings.Contains(b, `"model":"bench-1"`) {
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
		}
	}}
	ln := listen(t)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	res, err := RunLoad(context.Background(), LoadConfig{Addr: ln.Addr().String(), Workloads: policiesWorkload(),
		Rate: 300, Connections: 4, Warmup: 50 * time.Millisecond, Duration: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.All.Requests == 0 || res.All.OK != res.All.Requests {
		t.Errorf("%+v", res.All)
	}
}

func TestNewSectionsRender(t *testing.T) {
	rep := &Report{
		Policies: &PoliciesResult{Variants: []PolicyVariant{
			{Name: VariantOff, Config: "off cfg", CPUPer1k: 100},
			{Name: "validate", Config: "v cfg", CPUPer1k: 150},
		}, Dropped: map[string]string{"cache-fallback": "unknown key"}},
		State: &StateResult{Targets: []StateTarget{
			{Name: StoreUnkeyed, Load: LoadResult{RPS: 1000}}, {Name: StoreRedis, Load: LoadResult{RPS: 500}, StoreCPUPer1k: 12.5},
		}, Skipped: map[string]string{}},
		Soak: &SoakResult{Variant: VariantAll, IdleRSS: 10 << 20, Samples: []RSSSample{{At: 5, RSS: 20 << 20}}},
	}
	rep.Policies.compare()
	rep.State.compare()
	if r := rep.Policies.Variants[1].CPURatio; r != 1.5 {
		t.Errorf("cpu ratio %v", r)
	}
	if r := rep.State.Targets[1].RPSRatio; r != 0.5 {
		t.Errorf("rps ratio %v", r)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	md := string(rep.Markdown(""))
	for _, want := range []string{"1.50×", "0.50×", "12.5", "dropped cache-fallback", "slope MiB/min", "10.0 MiB", "5s 20.0"} {
		if !strings.Contains(text.String(), want) || !strings.Contains(md, want) {
			t.Errorf("%q missing:\n%s\n%s", want, text.String(), md)
		}
	}
	for _, want := range []string{"### Policies", "### State", "### Soak", "- validate: `v cfg`"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestNewScenarios runs policies, state and soak in this process with
// tiny durations (goleak checks the harness), and checks shapes, never
// throughput.
func TestNewScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	exe := buildBallast(t)
	opts := Options{Exe: exe, Duration: 150 * time.Millisecond, Warmup: -1, Rate: 150, Connections: 4, Timeout: time.Second}
	p, err := Policies(context.Background(), Options{Exe: exe, Duration: opts.Duration, Warmup: -1, Rate: 150, Connections: 4,
		Targets: []string{"validate", VariantAll}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Variants) != 3 || p.Variants[0].Name != VariantOff || p.Variants[2].Name != VariantAll {
		t.Fatalf("%+v", p.Variants)
	}
	for _, v := range p.Variants {
		if a := v.Open.All; a.Requests == 0 || a.OK != a.Requests || v.PeakRSS <= 0 {
			t.Errorf("%s: %+v", v.Name, v)
		}
	}
	s, err := State(context.Background(), Options{Exe: exe, Duration: opts.Duration, Warmup: -1, Connections: 4, Targets: []string{StoreMemory}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Targets) != 2 || s.Targets[1].RPSRatio <= 0 || s.Targets[1].Load.All.OK != s.Targets[1].Load.All.Requests {
		t.Fatalf("%+v", s.Targets)
	}
	soak, err := Soak(context.Background(), Options{Exe: exe, Duration: 500 * time.Millisecond, Warmup: -1, Rate: 100,
		Connections: 4, SampleEvery: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(soak.Samples) < 3 || soak.IdleRSS <= 0 || soak.MaxRSS < soak.StartRSS || soak.Load.All.OK == 0 || soak.Variant != VariantAll {
		t.Errorf("%+v", soak)
	}
	for _, bad := range []Options{{Exe: exe, Targets: []string{"nope"}}} {
		if _, err := Policies(context.Background(), bad); err == nil {
			t.Error("unknown policies variant accepted")
		}
		if _, err := State(context.Background(), bad); err == nil {
			t.Error("unknown state store accepted")
		}
	}
}

// listen opens a loopback listener closed with the test.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
