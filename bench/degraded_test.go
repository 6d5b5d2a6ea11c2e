package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/valyala/fasthttp"
)

// degradedCases are ballasts whose route degrades once its upstream is
// gone: config "" is the built-in chain (cache: {mode: fallback}), any
// other a user's config; want is the class each answer must count as.
var degradedCases = []struct {
	name, config, want string
}{
	{name: "the built-in chain's stale cache", want: "stale"},
	{name: "a config's static fallback", want: "fallback", config: `
routes:
  - name: fallback
    match: {path_prefix: /}
    upstream: https://api.example.com
    retry: {attempts: 1}
    static_fallback: {status: 200, body: '{"choices":[]}'}
`},
	// The stored answer comes first, the static fallback after it.
	{name: "a config's stale cache before its static fallback", want: "stale", config: `
routes:
  - name: both
    match: {path_prefix: /}
    upstream: https://api.example.com
    retry: {attempts: 1}
    cache: {mode: fallback}
    static_fallback: {status: 200, body: '{"choices":[]}'}
`},
}

// startDegrading starts an upstream and a ballast in front of it (the
// built-in chain when config is "", else that config rewritten as
// Overhead does), passes checkRoute with the upstream up, and then stops
// the upstream: from then on every answer ballast gives is degraded.
func startDegrading(t *testing.T, exe, config string) *Process {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	up, err := startUpstream(ctx, exe, UpstreamConfig{Size: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Stop)
	var p *Process
	if config == "" {
		p, _, err = startBallast(ctx, exe, dir, up.Addr, false, 1)
	} else {
		file := filepath.Join(dir, "user.yaml")
		if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		u, lerr := loadUserConfig(file)
		if lerr != nil {
			t.Fatal(lerr)
		}
		p, err = startUserBallast(ctx, exe, dir, u, up.Addr, "", 1)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	wl, err := overheadWorkload("", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := checkRoute(ctx, p.Addr, wl, 2*time.Second, "the test's"); err != nil {
		t.Fatal(err)
	}
	up.Stop() // connections to the route's upstream are refused from now on
	return p
}

// Regression: checkRoute looks at the first answer only. When the route's
// upstream failed later, ballast answered with the route's static_fallback
// or a stale stored answer, 2xx both, and the load driver counted each as
// served: the figures timed the fallbacks, not the route. The open loop
// and the Go closed loop must count every such answer in a class of its
// own.
func TestDriverCountsDegradedAnswers(t *testing.T) {
	exe := buildBallast(t)
	wl, err := overheadWorkload("", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range degradedCases {
		t.Run(c.name, func(t *testing.T) {
			p := startDegrading(t, exe, c.config)
			runs := []struct {
				name string
				cfg  LoadConfig
			}{
				{"open loop", LoadConfig{Rate: 100, Duration: 300 * time.Millisecond}},
				{"Go closed loop", LoadConfig{Duration: 200 * time.Millisecond}},
			}
			for _, r := range runs {
				cfg := r.cfg
				cfg.Addr, cfg.Workloads, cfg.Connections, cfg.Timeout = p.Addr, []Workload{wl}, 4, 2*time.Second
				res, err := RunLoad(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				if a := res.All; a.Requests == 0 || a.OK != 0 || a.Errors[c.want] != a.Requests {
					t.Errorf("%s: %d requests, %d ok, errors %v; want all %s", r.name, a.Requests, a.OK, a.Errors, c.want)
				}
			}
		})
	}
}

// TestDegradedClass pins degradedClass to the fields ballast writes
// (proxy/degrade.go, the members of cache.Status.Append).
func TestDegradedClass(t *testing.T) {
	stored := cache.Lookup{Remaining: -42 * time.Second}
	member := func(s cache.Status) string { return string(s.Append(nil, "ballast")) }
	cases := []struct {
		name   string
		fields []string // name, value, ...
		want   string
	}{
		{name: "no ballast", fields: []string{"Content-Type", "application/json"}},
		{name: "forwarded and stored", fields: []string{"Cache-Status", member(cache.Miss(cache.FwdBypass, true, false))}},
		{name: "fresh hit", fields: []string{"Cache-Status", member(cache.Hit(cache.Lookup{Remaining: time.Minute})), "Age", "3"}},
		{name: "stale after the upstream failed", fields: []string{"Cache-Status", member(cache.StaleIfError(stored, true, 503))}, want: classStale},
		{name: "stale without asking (breaker open)", fields: []string{"Cache-Status", member(cache.StaleIfError(stored, false, 0))}, want: classStale},
		{name: "stale, after the upstream's own member", fields: []string{"Cache-Status", "edge; hit", "Cache-Status", member(cache.StaleIfError(stored, true, 0))}, want: classStale},
		{name: "stale, in a folded line", fields: []string{"Cache-Status", "edge; hit, " + member(cache.StaleIfError(stored, true, 0))}, want: classStale},
		{name: "another cache's stale answer", fields: []string{"Cache-Status", "edge; fwd=stale; detail=stale-if-error", "Cache-Status", member(cache.Miss(cache.FwdBypass, true, false))}},
		{name: "a name that only starts like ballast's", fields: []string{"Cache-Status", "ballast2; fwd=stale; detail=stale-if-error"}},
		{name: "static fallback", fields: []string{"Cache-Status", member(cache.Status{Fwd: cache.FwdURIMiss, FwdStatus: 503, Detail: "static-fallback"}), "X-Ballast-Fallback", "static"}, want: classFallback},
		{name: "static fallback, whatever comes first", fields: []string{"X-Ballast-Fallback", "static", "Cache-Status", member(cache.StaleIfError(stored, true, 0))}, want: classFallback},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var h fasthttp.ResponseHeader
			for i := 0; i+1 < len(c.fields); i += 2 {
				h.Add(c.fields[i], c.fields[i+1])
			}
			if got := degradedClass(&h); got != c.want {
				t.Errorf("degradedClass(%q) = %q, want %q", c.fields, got, c.want)
			}
		})
	}
}

// wrk sees statuses, never header fields: against ballast, the stale
// answers of its saturation run are counted from ballast's /metrics over
// the run, and taken from its successes.
func TestWrkSaturationCountsStaleAnswers(t *testing.T) {
	exe := buildBallast(t)
	wl, err := overheadWorkload("", "")
	if err != nil {
		t.Fatal(err)
	}
	p := startDegrading(t, exe, "") // the built-in chain's stale cache
	res, err := saturate(context.Background(), DriverWrk, LoadConfig{Addr: p.Addr, Workloads: []Workload{wl},
		Connections: 4, Warmup: time.Millisecond, Duration: time.Second, Timeout: 2 * time.Second}, p)
	if err != nil {
		t.Fatal(err)
	}
	a := res.All
	if a.Requests == 0 || a.OK != 0 || a.Errors["stale"] == 0 || a.Errors["stale"]+a.Errors["transport"] != a.Requests {
		t.Errorf("%d requests, %d ok, errors %v; want all stale", a.Requests, a.OK, a.Errors)
	}
	if len(res.Workloads) != 1 || res.Workloads[0].Name != wl.Name || res.Workloads[0].OK != a.OK || fmtErrors(res.Workloads[0].Errors) != fmtErrors(a.Errors) {
		t.Errorf("workloads %+v, all %+v", res.Workloads, a)
	}
}

// What wrk cannot count, the report says: a route's static_fallback
// answering below 400 passes for the route in wrk's saturation run.
func TestOverheadSaysWhatWrkCannotCount(t *testing.T) {
	exe := buildBallast(t)
	dir := t.TempDir()
	const fallbackYAML = `
routes:
  - name: quiet
    match: {path_prefix: /v1/}
    upstream: https://api.example.com
    static_fallback: {status: 200, body: '{"choices":[]}'}
  - name: loud
    match: {path_prefix: /}
    upstream: https://api.example.com
    static_fallback: {body: '{"error":"later"}'}
`
	file := filepath.Join(dir, "fallback.yaml")
	if err := os.WriteFile(file, []byte(fallbackYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, driver string
		want               bool
	}{
		{name: "a 200 fallback under wrk", path: "/v1/chat/completions", driver: DriverWrk, want: true},
		{name: "a 503 fallback under wrk, counted as a status error", path: "/other", driver: DriverWrk},
		{name: "a 200 fallback under the Go driver", path: "/v1/chat/completions", driver: DriverGo},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := Overhead(context.Background(), Options{Exe: exe, Config: file, Path: c.path, Duration: 100 * time.Millisecond, Warmup: -1,
				Saturation: time.Second, Rate: 100, Connections: 2, Timeout: time.Second, Targets: []string{TargetBallast}, Driver: c.driver})
			if err != nil {
				t.Fatal(err)
			}
			var text bytes.Buffer
			if err := (&Report{Overhead: o}).WriteText(&text); err != nil {
				t.Fatal(err)
			}
			said := len(o.DriverNotes) == 1 && strings.Contains(o.DriverNotes[0], "X-Ballast-Fallback") &&
				strings.Contains(text.String(), "note: "+o.DriverNotes[0])
			if said != c.want || (!c.want && len(o.DriverNotes) > 0) {
				t.Errorf("driver notes %q, want one: %v; report:\n%s", o.DriverNotes, c.want, text.String())
			}
		})
	}
}
