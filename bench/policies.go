package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Policies scenario defaults: the open-loop rate, and the measured window
// of each variant (eight variants keep the scenario under two minutes).
const (
	PoliciesDefaultRate     = 2000
	PoliciesDefaultDuration = 5 * time.Second
)

// Policy variant names; VariantOff is the baseline.
const (
	VariantOff = "off"
	VariantAll = "all"
)

// policyVariant is one policy switched on alone, on top of plain ballast
// with everything off.
type policyVariant struct {
	name string
	// armRetry keeps retry, budget and breaker at their defaults instead of
	// offPolicy's one attempt and no breaker.
	armRetry bool
	// logOn writes the per-request log line (to the child's /dev/null).
	logOn bool
	// extra is the policy's own defaults-block line.
	extra string
}

// policyVariants are the single-policy variants, the baseline first; "all"
// is built from those config.Parse accepts (see allVariant).
var policyVariants = []policyVariant{
	{name: VariantOff},
	// unsafe_methods makes the benchmark's POSTs eligible, as on a model
	// route; without faults no attempt is repeated, so this is the cost of
	// the armed machinery (classify, budget, breaker).
	{name: "retry", armRetry: true, extra: "retry: {unsafe_methods: true}"},
	// Far above the load: the limiter is consulted and never binds.
	{name: "ratelimit", extra: "rate_limit: {rps: 100000}"},
	{name: "validate", extra: "validate: {status: [2xx], content_type: [application/json], json: true}"},
	{name: "cache-fallback", extra: "cache: {mode: fallback}"},
	{name: "idempotency-auto", extra: "idempotency: {mode: auto, window: 1m}"},
	{name: "trail", logOn: true},
}

// config returns the variant's top-level and defaults-block fragments.
func (v policyVariant) config() (top, policy string) {
	top = "log: {requests: false}\n"
	if v.logOn {
		top = "log: {requests: true}\n"
	}
	if !v.armRetry {
		policy = offPolicy
	}
	if v.extra != "" {
		policy += v.extra + "\n"
	}
	return top, policy
}

// describe is the variant's config in one line, as a change to off's.
func (v policyVariant) describe() string {
	if v.name == VariantOff {
		return "log: {requests: false}; " + strings.ReplaceAll(strings.TrimSpace(offPolicy), "\n", "; ")
	}
	var parts []string
	if v.armRetry {
		parts = append(parts, "retry and breaker at their defaults")
	}
	if v.logOn {
		parts = append(parts, "log: {requests: true}")
	}
	if v.extra != "" {
		parts = append(parts, strings.ReplaceAll(v.extra, "\n", "; "))
	}
	return "off + " + strings.Join(parts, "; ")
}

// allVariant switches on every accepted variant's policy together.
func allVariant(accepted []policyVariant) policyVariant {
	all := policyVariant{name: VariantAll}
	var extras []string
	for _, v := range accepted {
		all.armRetry = all.armRetry || v.armRetry
		all.logOn = all.logOn || v.logOn
		if v.extra != "" && !strings.HasPrefix(v.extra, "retry:") {
			extras = append(extras, v.extra)
		}
	}
	if all.armRetry {
		extras = append([]string{"retry: {unsafe_methods: true}"}, extras...)
	}
	all.extra = strings.Join(extras, "\n")
	return all
}

// acceptedVariants returns the variants config.Parse accepts, "all" last,
// and why each other one was dropped.
func acceptedVariants() ([]policyVariant, map[string]string) {
	dropped := map[string]string{}
	var ok []policyVariant
	try := func(v policyVariant) bool {
		top, policy := v.config()
		c := smallConfig{Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", Upstream: "127.0.0.1:3", Top: top, Policy: policy}
		if _, err := c.check(); err != nil {
			dropped[v.name] = err.Error()
			return false
		}
		return true
	}
	for _, v := range policyVariants {
		if try(v) {
			ok = append(ok, v)
		}
	}
	if all := allVariant(ok); try(all) {
		ok = append(ok, all)
	}
	return ok, dropped
}

// PolicyVariantNames lists the policies variants in run order.
func PolicyVariantNames() []string {
	var names []string
	for _, v := range policyVariants {
		names = append(names, v.name)
	}
	return append(names, VariantAll)
}

// PolicyVariant is one variant's measurements.
type PolicyVariant struct {
	Name string `json:"name"`
	// Config is the variant's config fragment, in one line.
	Config string     `json:"config"`
	Open   LoadResult `json:"open"`
	// CPUPer1k is ballast's CPU (user+sys) per 1,000 requests of the
	// measured window, in milliseconds; UpstreamCPUPer1k the upstream's.
	CPUPer1k         float64 `json:"cpu_ms_per_1k"`
	UpstreamCPUPer1k float64 `json:"upstream_cpu_ms_per_1k"`
	// PeakRSS is ballast's VmHWM in bytes at the end of the run.
	PeakRSS int64 `json:"peak_rss_bytes"`
	// Against the off variant (zero for off itself).
	// CPURatio is CPUPer1k over off's.
	CPURatio float64 `json:"cpu_ratio"`
	// AddedLatency is this variant's percentile minus off's.
	AddedLatency Percentiles `json:"added_latency"`
}

// PoliciesResult is the policies scenario's report.
type PoliciesResult struct {
	Settings Settings `json:"settings"`
	// Variants are the measurements, one per variant, off first. With more
	// than one round, each is the median over the rounds
	// (medianPolicyVariant), and its ratios are of the medians.
	Variants []PolicyVariant `json:"variants"`
	// Rounds holds every round's measurements, variants in the order of
	// Variants (not the order they ran), each round's ratios against that
	// round's off, when there was more than one round.
	Rounds [][]PolicyVariant `json:"rounds,omitempty"`
	// Dropped names variants config.Parse refused, with its error.
	Dropped map[string]string `json:"dropped,omitempty"`
	// CPUProfiles are the files of ballast's CPU profiles, one per variant
	// and round, in the order they ran, when Options.CPUProfileDir was set.
	CPUProfiles []string `json:"cpu_profiles,omitempty"`
}

// policiesWorkload is a model-style POST whose body differs on every
// request, so the cache stores and auto-idempotency claims a new entry
// each time, as with real prompts.
func policiesWorkload() []Workload {
	return []Workload{{Name: "chat", Method: "POST", Path: "/v1/chat/completions", Body: modelBody,
		ContentType: "application/json", UniqueBody: true}}
}

// Policies measures what each policy costs when switched on alone: one
// upstream (profile none), and one ballast child per variant, each run
// open-loop at opts.Rate for opts.Duration (default 5s), against the off
// variant of the same run. opts.Targets limits the variants (off always
// runs).
//
// With opts.Rounds above 1, every variant is measured once per round, the
// variants taking turns as the overhead scenario's targets do (each round
// starts one variant later), so that a noisy stretch, or the first run's
// cold start, lands on one round rather than always on off; the report
// gives each variant's medians and every round's ratios.
func Policies(ctx context.Context, opts Options) (*PoliciesResult, error) {
	if err := opts.only("policies"); err != nil {
		return nil, err
	}
	opts, err := opts.withScenarioDefaults(PoliciesDefaultRate, PoliciesDefaultDuration)
	if err != nil {
		return nil, err
	}
	known := PolicyVariantNames()
	for _, t := range opts.Targets {
		if !slices.Contains(known, t) {
			return nil, fmt.Errorf("%w: unknown policies variant %q (known: %s)", ErrLoad, t, strings.Join(known, ", "))
		}
	}
	if opts.CPUProfileDir != "" {
		if err := makeProfileDir(opts.CPUProfileDir); err != nil {
			return nil, err
		}
	}
	variants, dropped := acceptedVariants()
	res := &PoliciesResult{Settings: opts.settings(), Dropped: dropped}
	res.Settings.Saturation = ""
	res.Settings.Rounds = opts.Rounds
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(opts.Progress, "policies: starting upstream (%d-byte answers, profile none)\n", opts.Size)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed})
	if err != nil {
		return nil, err
	}
	defer up.Stop()
	open := opts
	open.Saturation = 0
	var selected []policyVariant
	for _, v := range variants {
		if v.name == VariantOff || len(opts.Targets) == 0 || slices.Contains(opts.Targets, v.name) {
			selected = append(selected, v)
		}
	}
	res.Rounds, err = inTurns(opts.Rounds, len(selected), func(round, k int) (PolicyVariant, error) {
		profile := ""
		if opts.CPUProfileDir != "" {
			profile = cpuProfilePath(opts.CPUProfileDir, selected[k].name, round+1)
		}
		pv, err := runPolicyVariant(ctx, open, dir, selected[k], up, roundPrefix("policies", round, opts.Rounds), profile)
		if err == nil && profile != "" {
			res.CPUProfiles = append(res.CPUProfiles, profile)
			fmt.Fprintf(opts.Progress, "policies: ballast's CPU profile: go tool pprof %s\n", profile)
		}
		return pv, err
	})
	if err != nil {
		return nil, err
	}
	res.summarise()
	return res, nil
}

// summarise fills the comparisons from r.Rounds: with one round, Variants
// is that round; with more, Variants are the medians and each round keeps
// its own ratios against its own off.
func (r *PoliciesResult) summarise() {
	if len(r.Rounds) == 0 {
		return
	}
	r.Variants, r.Rounds = summariseRounds(r.Rounds, compareVariants, medianPolicyVariant)
}

// medianPolicyVariant summarises one variant's rounds as medianTarget
// does an overhead target's: the median of each figure, taken separately,
// requests and errors added up, and the highest peak RSS.
func medianPolicyVariant(runs []PolicyVariant) PolicyVariant {
	m := PolicyVariant{Name: runs[0].Name, Config: runs[0].Config}
	m.CPUPer1k = medianOf(runs, func(v PolicyVariant) float64 { return v.CPUPer1k })
	m.UpstreamCPUPer1k = medianOf(runs, func(v PolicyVariant) float64 { return v.UpstreamCPUPer1k })
	opens := make([]LoadResult, len(runs))
	for i, v := range runs {
		opens[i] = v.Open
		m.PeakRSS = max(m.PeakRSS, v.PeakRSS)
	}
	m.Open = medianLoad(opens)
	return m
}

// runPolicyVariant measures variant v on a ballast child of its own; with
// profile set, it fetches that child's CPU profile of the measured window
// into the file profile (see measureTarget).
func runPolicyVariant(ctx context.Context, opts Options, dir string, v policyVariant, up *Process, progress, profile string) (PolicyVariant, error) {
	top, policy := v.config()
	bl, err := startSmallBallast(ctx, opts.Exe, dir, "policies-"+v.name,
		smallConfig{Upstream: up.Addr, Top: top, Policy: policy}, v.logOn, opts.Procs)
	if err != nil {
		return PolicyVariant{}, err
	}
	defer bl.Stop()
	fmt.Fprintf(opts.Progress, "%s%s open loop at %.0f rps for %v\n", progress, v.name, opts.Rate, opts.Duration)
	ot, err := measureTarget(ctx, opts, policiesWorkload(), v.name, bl, up, profile)
	if err != nil {
		return PolicyVariant{}, err
	}
	return PolicyVariant{Name: v.name, Config: v.describe(), Open: ot.Open, CPUPer1k: ot.CPUPer1k,
		UpstreamCPUPer1k: ot.UpstreamCPUPer1k, PeakRSS: ot.PeakRSS}, nil
}

// compare fills the against-off fields of r.Variants.
func (r *PoliciesResult) compare() { compareVariants(r.Variants) }

// compareVariants fills the against-off fields of variants measured
// together; nothing when off is not among them.
func compareVariants(variants []PolicyVariant) {
	i := slices.IndexFunc(variants, func(v PolicyVariant) bool { return v.Name == VariantOff })
	if i < 0 {
		return
	}
	off := variants[i]
	d := off.Open.All.Latency
	for i := range variants {
		v := &variants[i]
		if v.Name == VariantOff {
			continue
		}
		l := v.Open.All.Latency
		v.CPURatio = ratio(v.CPUPer1k, off.CPUPer1k)
		v.AddedLatency = Percentiles{P50: l.P50 - d.P50, P90: l.P90 - d.P90, P99: l.P99 - d.P99,
			P999: l.P999 - d.P999, Max: l.Max - d.Max, Mean: l.Mean - d.Mean}
	}
}
