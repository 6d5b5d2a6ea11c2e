package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"
)

// Overhead target names.
const (
	TargetDirect  = "direct"
	TargetBare    = "bare"
	TargetBallast = "ballast"
	TargetNginx   = "nginx"
)

// OverheadDefaultRate is the overhead scenario's open-loop rate.
const OverheadDefaultRate = 2000

// modelBody is a small chat-completion request.
var modelBody = []byte(`{"model":"bench-1","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":16}`)

// OverheadTarget is one target's measurements in the overhead scenario.
type OverheadTarget struct {
	// Name is direct, bare, ballast or nginx.
	Name string `json:"name"`
	// Open is the open-loop run at the fixed rate.
	Open LoadResult `json:"open"`
	// Saturation is the closed-loop run; nil when skipped.
	Saturation *LoadResult `json:"saturation,omitempty"`
	// CPUPer1k is the CPU (user+sys) the process under test spent per
	// 1,000 requests of the open-loop window (warm-up excluded), in
	// milliseconds: the proxy for proxies, the upstream for direct.
	CPUPer1k float64 `json:"cpu_ms_per_1k"`
	// UpstreamCPUPer1k is the upstream's share in the same window.
	UpstreamCPUPer1k float64 `json:"upstream_cpu_ms_per_1k"`
	// PeakRSS is the process under test's VmHWM in bytes at the end.
	PeakRSS int64 `json:"peak_rss_bytes"`

	// Against direct (zero for direct itself and when direct did not run).
	// AddedLatency is this target's open-loop percentile minus direct's.
	AddedLatency Percentiles `json:"added_latency"`
	// LatencyRatio is this target's percentile over direct's.
	LatencyRatio Percentiles `json:"latency_ratio"`
	// RPSRatio is saturation rps over direct's.
	RPSRatio float64 `json:"rps_ratio"`
	// CPURatio is CPUPer1k over direct's (the upstream's CPU there).
	CPURatio float64 `json:"cpu_ratio"`
}

// OverheadResult is the overhead scenario's report.
type OverheadResult struct {
	Settings Settings `json:"settings"`
	// Targets are the measurements, one per target. With more than one
	// round, each is the median over the rounds (see medianTarget).
	Targets []OverheadTarget `json:"targets"`
	// Rounds holds every round's measurements, in the order they ran,
	// when there was more than one round.
	Rounds [][]OverheadTarget `json:"rounds,omitempty"`
	// RoundsVersus gives, with more than one round, every round's ratios
	// of ballast against the other proxies and their added latencies: the
	// per-round table's figures.
	RoundsVersus []RoundVersus `json:"rounds_versus,omitempty"`
	// Skipped lists targets that were asked for or known but did not run,
	// with why (nginx not on PATH).
	Skipped map[string]string `json:"skipped,omitempty"`
	// Request is what every target was sent, "POST /v1/chat/completions";
	// empty in reports from before it could change.
	Request string `json:"request,omitempty"`
	// Config is the ballast config file measured (Options.Config) as it
	// was named, never its contents; empty for the built-in chain.
	Config string `json:"config,omitempty"`
	// CPUProfiles are the files of ballast's CPU profiles, one per round,
	// when Options.CPUProfileDir was set.
	CPUProfiles []string `json:"cpu_profiles,omitempty"`
	// Route is the route of Config that served the request (read from
	// ballast's /metrics after checkRoute's request).
	Route string `json:"route,omitempty"`
	// ConfigNotes name the policies of Route that answer the repeated
	// request from a store after the first (see userConfig.repeatNotes).
	ConfigNotes []string `json:"config_notes,omitempty"`
	// DriverNotes say what the saturation driver could not count in
	// Route's answers (see userConfig.wrkBlindSpots).
	DriverNotes []string `json:"driver_notes,omitempty"`
}

// Overhead measures the same upstream directly, through a bare fasthttp
// proxy, through ballast, and through nginx when it is on PATH, each in its
// own child process so its CPU can be read from /proc. Each target gets an
// open-loop run at opts.Rate (latency, CPU per 1,000 requests) and a
// closed-loop saturation run with opts.Connections (throughput), driven
// by wrk or by RunLoad as opts.Driver says, all with the request of
// opts.Method and opts.Path.
//
// Ballast runs its built-in chain (ballast.yaml.tmpl), or with
// opts.Config the user's config file, loaded as `ballast run -c` loads it
// and rewritten so that everything stays on 127.0.0.1 (see
// userConfig.rewrite); a config that does not load or cannot be rewritten
// is an ErrConfig error before anything starts. Either way ballast must
// answer the request 2xx once before it is measured (checkRoute).
//
// With opts.Rounds above 1, every target is measured once per round, the
// targets taking turns (each round starts one target later than the one
// before), so that a noisy stretch of a shared machine lands on one
// round's figures rather than on one target's; the report gives each
// target's medians and every round's ratios.
func Overhead(ctx context.Context, opts Options) (*OverheadResult, error) {
	if opts.StreamEvents != 0 || opts.StreamInterval != 0 {
		return nil, fmt.Errorf("%w: the overhead scenario does not take StreamEvents and StreamInterval (stream only)", ErrLoad)
	}
	opts, err := opts.withDefaults(OverheadDefaultRate)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	for _, t := range opts.Targets {
		if !slices.Contains([]string{TargetDirect, TargetBare, TargetBallast, TargetNginx}, t) {
			return nil, fmt.Errorf("%w: unknown overhead target %q (known: direct, bare, ballast, nginx)", ErrLoad, t)
		}
	}
	if opts.Saturation > 0 {
		if opts.Driver, err = resolveDriver(opts.Driver, exec.LookPath); err != nil {
			return nil, err
		}
	}
	wl, err := overheadWorkload(opts.Method, opts.Path)
	if err != nil {
		return nil, err
	}
	want := func(name string) bool { return len(opts.Targets) == 0 || slices.Contains(opts.Targets, name) }
	for _, ballastOnly := range []struct{ set, what string }{{opts.Config, "a config"}, {opts.CPUProfileDir, "a CPU profile"}} {
		if ballastOnly.set != "" && !want(TargetBallast) {
			return nil, fmt.Errorf("%w: %s is ballast's, and ballast is not among the targets", ErrLoad, ballastOnly.what)
		}
	}
	var user *userConfig
	redisExe := ""
	if opts.Config != "" {
		if user, err = loadUserConfig(opts.Config); err != nil {
			return nil, err
		}
		if user.needsRedis() {
			redisExe = RedisPath()
			if err := user.checkRedis(redisExe != ""); err != nil {
				return nil, err
			}
		}
	}
	if opts.CPUProfileDir != "" {
		if err := makeProfileDir(opts.CPUProfileDir); err != nil {
			return nil, err
		}
	}
	res := &OverheadResult{Settings: opts.settings(), Skipped: map[string]string{}, Request: requestLine(wl), Config: opts.Config}
	res.Settings.Rounds = opts.Rounds
	if opts.Saturation > 0 {
		res.Settings.SaturationDriver = opts.Driver
	}

	fmt.Fprintf(opts.Progress, "overhead: starting upstream (%d-byte answers)\n", opts.Size)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed})
	if err != nil {
		return nil, err
	}
	defer up.Stop()

	type target struct {
		name string
		proc *Process
	}
	var targets []target
	if want(TargetDirect) {
		targets = append(targets, target{TargetDirect, up})
	}
	if want(TargetBare) {
		p, err := startBareProxy(ctx, opts.Exe, up.Addr, opts.Procs)
		if err != nil {
			return nil, err
		}
		defer p.Stop()
		targets = append(targets, target{TargetBare, p})
	}
	if want(TargetBallast) {
		redis := ""
		if redisExe != "" {
			r, err := startRedis(ctx, redisExe)
			if err != nil {
				return nil, err
			}
			defer r.Stop()
			redis = r.Addr
			fmt.Fprintf(opts.Progress, "overhead: the config's Redis is the harness's redis-server on %s\n", redis)
		}
		p, err := startOverheadBallast(ctx, opts, dir, user, up.Addr, redis)
		if err != nil {
			return nil, err
		}
		defer p.Stop()
		name := "the built-in chain"
		if user != nil {
			name = user.file
		}
		if err := checkRoute(ctx, p.Addr, wl, opts.Timeout, name); err != nil {
			return nil, err
		}
		if user != nil {
			if res.Route, err = servedRoute(p, opts.Timeout); err != nil {
				return nil, err
			}
			res.ConfigNotes = user.repeatNotes(res.Route)
			if opts.Saturation > 0 && opts.Driver == DriverWrk {
				res.DriverNotes = user.wrkBlindSpots(res.Route)
			}
		}
		targets = append(targets, target{TargetBallast, p})
	}
	if want(TargetNginx) {
		if exe := NginxPath(); exe == "" {
			res.Skipped[TargetNginx] = "nginx is not on PATH"
		} else {
			p, err := startNginx(ctx, exe, dir, up.Addr, opts.Procs, opts.Connections, 0)
			if err != nil {
				return nil, err
			}
			defer p.Stop()
			targets = append(targets, target{TargetNginx, p})
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: no overhead target selected (known: direct, bare, ballast, nginx)", ErrLoad)
	}

	res.Rounds, err = inTurns(opts.Rounds, len(targets), func(round, k int) (OverheadTarget, error) {
		t := targets[k]
		fmt.Fprintf(opts.Progress, "%s%s open loop at %.0f rps for %v\n", roundPrefix("overhead", round, opts.Rounds), t.name, opts.Rate, opts.Duration)
		profile := ""
		if opts.CPUProfileDir != "" && t.name == TargetBallast {
			profile = cpuProfilePath(opts.CPUProfileDir, "", round+1)
		}
		ot, err := measureTarget(ctx, opts, []Workload{wl}, t.name, t.proc, up, profile)
		if err == nil && profile != "" {
			res.CPUProfiles = append(res.CPUProfiles, profile)
			fmt.Fprintf(opts.Progress, "overhead: ballast's CPU profile: go tool pprof %s\n", profile)
		}
		return ot, err
	})
	if err != nil {
		return nil, err
	}
	res.summarise()
	return res, nil
}

// startOverheadBallast starts the overhead scenario's ballast: the
// built-in chain, or user's config (nil: none) with redis (host:port of
// the harness's redis-server, "" for none) in place of its Redis.
func startOverheadBallast(ctx context.Context, opts Options, dir string, user *userConfig, upstream, redis string) (*Process, error) {
	if user == nil {
		p, _, err := startBallast(ctx, opts.Exe, dir, upstream, false, opts.Procs)
		return p, err
	}
	fmt.Fprintf(opts.Progress, "overhead: ballast runs %s, rewritten for loopback\n", user.file)
	return startUserBallast(ctx, opts.Exe, dir, user, upstream, redis, opts.Procs)
}

// summarise fills the comparisons from o.Rounds: with one round, Targets
// is that round; with more, Targets are the medians (medianTarget) and
// RoundsVersus every round's ratios.
func (o *OverheadResult) summarise() {
	if len(o.Rounds) == 0 {
		return
	}
	o.Targets, o.Rounds = summariseRounds(o.Rounds, compare, medianTarget)
	if len(o.Rounds) > 1 {
		o.RoundsVersus = o.ballastVersus()
	}
}

// measureTarget runs the open-loop and saturation phases against one
// target, reading CPU around the open-loop window. With profile set (a
// ballast target only), it also fetches ballast's CPU profile of that
// window into the file profile (fetchCPUProfile): started once the CPU is
// read at the start of the window, not during the warm-up, and lasting
// profileSeconds(opts.Duration). A failed fetch fails the target.
func measureTarget(ctx context.Context, opts Options, wl []Workload, name string, proc, up *Process, profile string) (OverheadTarget, error) {
	ot := OverheadTarget{Name: name}
	var before, upBefore ProcUsage
	var usageErr, profileErr error
	open, err := RunLoad(ctx, LoadConfig{
		Addr: proc.Addr, Workloads: wl, Rate: opts.Rate, Connections: opts.Connections,
		Warmup: opts.Warmup, Duration: opts.Duration, Timeout: opts.Timeout,
		OnMeasure: func() {
			var e1, e2 error
			before, e1 = proc.Usage()
			upBefore, e2 = up.Usage()
			usageErr = errors.Join(e1, e2)
			if profile != "" {
				// RunLoad waits for this call before it returns.
				profileErr = fetchCPUProfile(ctx, proc, profileSeconds(opts.Duration), profile)
			}
		},
	})
	if err != nil {
		return ot, err
	}
	// A dead child has no /proc entry left, and no profile to give: say
	// that it died, and how, before that its profile was lost.
	for _, p := range []*Process{proc, up} {
		if err := p.alive(); err != nil {
			return ot, err
		}
	}
	if profileErr != nil {
		return ot, profileErr
	}
	after, e1 := proc.Usage()
	upAfter, e2 := up.Usage()
	if err := errors.Join(usageErr, e1, e2); err != nil {
		return ot, fmt.Errorf("bench: %s: %w", name, err)
	}
	ot.Open = open
	ot.CPUPer1k = per1k(after.CPU-before.CPU, open.All.Requests)
	ot.UpstreamCPUPer1k = per1k(upAfter.CPU-upBefore.CPU, open.All.Requests)
	ot.PeakRSS = after.PeakRSS
	if opts.Saturation > 0 {
		fmt.Fprintf(opts.Progress, "overhead: %s closed loop, %d connections for %v (%s driver)\n", name, opts.Connections, opts.Saturation, opts.Driver)
		sat, err := saturate(ctx, opts.Driver, LoadConfig{
			Addr: proc.Addr, Workloads: wl, Connections: opts.Connections,
			Warmup: opts.Warmup, Duration: opts.Saturation, Timeout: opts.Timeout,
		}, proc)
		if err != nil {
			return ot, err
		}
		ot.Saturation = &sat
	}
	for _, p := range []*Process{proc, up} {
		if err := p.alive(); err != nil {
			return ot, err
		}
	}
	return ot, ctx.Err()
}

// per1k is CPU milliseconds per 1,000 requests; 0 without requests.
func per1k(cpu time.Duration, requests int64) float64 {
	if requests <= 0 {
		return 0
	}
	return float64(cpu) / float64(time.Millisecond) / float64(requests) * 1000
}

// compare fills the against-direct fields of targets, measured together.
func compare(targets []OverheadTarget) {
	var direct *OverheadTarget
	for i := range targets {
		if targets[i].Name == TargetDirect {
			direct = &targets[i]
		}
	}
	if direct == nil {
		return
	}
	d := direct.Open.All.Latency
	for i := range targets {
		t := &targets[i]
		if t == direct {
			continue
		}
		l := t.Open.All.Latency
		t.AddedLatency = Percentiles{P50: l.P50 - d.P50, P90: l.P90 - d.P90, P99: l.P99 - d.P99,
			P999: l.P999 - d.P999, Max: l.Max - d.Max, Mean: l.Mean - d.Mean}
		t.LatencyRatio = Percentiles{P50: ratio(l.P50, d.P50), P90: ratio(l.P90, d.P90), P99: ratio(l.P99, d.P99),
			P999: ratio(l.P999, d.P999), Max: ratio(l.Max, d.Max), Mean: ratio(l.Mean, d.Mean)}
		if t.Saturation != nil && direct.Saturation != nil {
			t.RPSRatio = ratio(t.Saturation.RPS, direct.Saturation.RPS)
		}
		t.CPURatio = ratio(t.CPUPer1k, direct.CPUPer1k)
	}
}

// ratio is a/b, 0 when b is not positive (never NaN or Inf).
func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}
