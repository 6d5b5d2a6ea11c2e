package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// Soak scenario defaults.
const (
	SoakDefaultRate     = 500
	SoakDefaultDuration = 5 * time.Minute
)

// RSSSample is ballast's resident set at one moment of the soak.
type RSSSample struct {
	// At is seconds since the load started (warm-up included).
	At  float64 `json:"t_s"`
	RSS int64   `json:"rss_bytes"`
}

// SoakResult is the soak scenario's report.
type SoakResult struct {
	Settings Settings `json:"settings"`
	// Variant is the policies variant ballast ran with ("all" when it
	// parses, else "off"); Config its config in one line.
	Variant string     `json:"variant"`
	Config  string     `json:"config"`
	Load    LoadResult `json:"load"`
	// CPUPer1k is ballast's CPU per 1,000 requests (ms) over the window.
	CPUPer1k float64 `json:"cpu_ms_per_1k"`
	// IdleRSS is VmRSS once ready, before any load; StartRSS the first
	// sample under load; MaxRSS the largest sample; EndRSS the last.
	IdleRSS  int64 `json:"idle_rss_bytes"`
	StartRSS int64 `json:"start_rss_bytes"`
	MaxRSS   int64 `json:"max_rss_bytes"`
	EndRSS   int64 `json:"end_rss_bytes"`
	// SlopeMiBPerMin is the least-squares slope of RSS over the second
	// half of the run, in MiB per minute: near zero means memory is flat.
	SlopeMiBPerMin float64     `json:"slope_mib_per_min"`
	Samples        []RSSSample `json:"samples"`
}

// Soak runs ballast with every policy on (the policies scenario's "all"
// variant, bodies unique per request so caches and idempotency records
// fill up to their bounds) at a fixed open-loop rate (default 500 rps) for
// opts.Duration (default 5m), sampling its VmRSS every opts.SampleEvery
// (default 5s).
func Soak(ctx context.Context, opts Options) (*SoakResult, error) {
	if err := opts.only("soak"); err != nil {
		return nil, err
	}
	opts, err := opts.withScenarioDefaults(SoakDefaultRate, SoakDefaultDuration)
	if err != nil {
		return nil, err
	}
	variants, _ := acceptedVariants()
	v := variants[len(variants)-1] // all, else the last single variant
	if v.name != VariantAll {
		v = variants[0]
	}
	res := &SoakResult{Settings: opts.settings(), Variant: v.name, Config: v.describe()}
	res.Settings.Saturation, res.Settings.SampleEvery = "", opts.SampleEvery.String()
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(opts.Progress, "soak: starting upstream (%d-byte answers, profile none)\n", opts.Size)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed})
	if err != nil {
		return nil, err
	}
	defer up.Stop()
	top, policy := v.config()
	bl, err := startSmallBallast(ctx, opts.Exe, dir, "soak", smallConfig{Upstream: up.Addr, Top: top, Policy: policy}, v.logOn, opts.Procs)
	if err != nil {
		return nil, err
	}
	defer bl.Stop()
	if res.IdleRSS, err = ReadRSS(bl.Pid()); err != nil {
		return nil, err
	}

	fmt.Fprintf(opts.Progress, "soak: %s open loop at %.0f rps for %v, RSS every %v\n", v.name, opts.Rate, opts.Duration, opts.SampleEvery)
	var before ProcUsage
	var beforeErr error
	type outcome struct {
		lr  LoadResult
		err error
	}
	done := make(chan outcome, 1)
	start := time.Now()
	go func() {
		lr, err := RunLoad(ctx, LoadConfig{
			Addr: bl.Addr, Workloads: policiesWorkload(), Rate: opts.Rate, Connections: opts.Connections,
			Warmup: opts.Warmup, Duration: opts.Duration, Timeout: opts.Timeout,
			OnMeasure: func() { before, beforeErr = bl.Usage() },
		})
		done <- outcome{lr, err}
	}()
	tick := time.NewTicker(opts.SampleEvery)
	defer tick.Stop()
	sample := func() error {
		rss, err := ReadRSS(bl.Pid())
		if err != nil {
			// A dead child has no /proc entry left: say that it died.
			return errors.Join(bl.alive(), err)
		}
		res.Samples = append(res.Samples, RSSSample{At: time.Since(start).Seconds(), RSS: rss})
		return nil
	}
	var out outcome
wait:
	for {
		select {
		case <-tick.C:
			if err := sample(); err != nil {
				<-done
				return nil, err
			}
		case out = <-done:
			break wait
		}
	}
	if out.err != nil {
		return nil, out.err
	}
	if err := sample(); err != nil {
		return nil, err
	}
	after, err := bl.Usage()
	if err != nil || beforeErr != nil {
		return nil, fmt.Errorf("bench: soak: %w", errors.Join(err, beforeErr))
	}
	res.Load = out.lr
	res.CPUPer1k = per1k(after.CPU-before.CPU, out.lr.All.Requests)
	res.summarise(time.Since(start).Seconds())
	return res, ctx.Err()
}

// summarise fills start, max, end and the slope over the second half of a
// run that lasted total seconds.
func (r *SoakResult) summarise(total float64) {
	if len(r.Samples) == 0 {
		return
	}
	r.StartRSS = r.Samples[0].RSS
	r.EndRSS = r.Samples[len(r.Samples)-1].RSS
	var xs, ys []float64
	for _, s := range r.Samples {
		r.MaxRSS = max(r.MaxRSS, s.RSS)
		if s.At >= total/2 {
			xs = append(xs, s.At/60)
			ys = append(ys, float64(s.RSS)/(1<<20))
		}
	}
	r.SlopeMiBPerMin = slope(xs, ys)
}

// slope is the least-squares slope of ys over xs; 0 with fewer than two
// distinct xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if len(xs) < 2 || len(xs) != len(ys) {
		return 0
	}
	var sx, sy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/n, sy/n
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	if den == 0 {
		return 0
	}
	return num / den
}
