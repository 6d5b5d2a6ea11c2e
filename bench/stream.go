package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"
)

// Stream scenario defaults: a model streaming 100 tokens a second, and
// enough streams at once (about 20) to keep every proxy busy without
// saturating one core.
const (
	StreamDefaultRate     = 100
	StreamDefaultEvents   = 20
	StreamDefaultInterval = 10 * time.Millisecond
)

// streamBody is a chat-completion request that asks for a stream.
var streamBody = []byte(`{"model":"bench-1","stream":true,"messages":[{"role":"user","content":"Say hello in twenty words."}],"max_tokens":64}`)

// StreamTarget is one target's measurements in the stream scenario.
type StreamTarget struct {
	// Name is direct, ballast or nginx.
	Name string           `json:"name"`
	Load StreamLoadResult `json:"load"`
	// CPUPer1kEvents is the CPU (user+sys) the process under test spent
	// per 1,000 events it delivered, in milliseconds: the proxy for
	// proxies, the upstream for direct. It covers the measured window
	// from its start to the end of its last stream, and so do the events
	// (StreamLoadResult.WindowEvents: the warm-up's last events and
	// those of failed streams included).
	CPUPer1kEvents float64 `json:"cpu_ms_per_1k_events"`
	// UpstreamCPUPer1kEvents is the upstream's share in the same window.
	UpstreamCPUPer1kEvents float64 `json:"upstream_cpu_ms_per_1k_events"`
	// PeakRSS is the process under test's VmHWM in bytes at the end.
	PeakRSS int64 `json:"peak_rss_bytes"`

	// Against direct (zero for direct itself, when direct did not run,
	// and when either had no complete stream, so no times).
	// AddedFirstEvent is this target's first-event percentile minus
	// direct's; AddedEventDelay the same for the event delay.
	AddedFirstEvent Percentiles `json:"added_first_event"`
	AddedEventDelay Percentiles `json:"added_event_delay"`
	// CPURatio is CPUPer1kEvents over direct's (the upstream's CPU there).
	CPURatio float64 `json:"cpu_ratio"`
}

// StreamResult is the stream scenario's report.
type StreamResult struct {
	Settings Settings `json:"settings"`
	// Events and Interval are each stream's shape: that many SSE events,
	// Interval apart.
	Events   int    `json:"events"`
	Interval string `json:"interval"`
	// Targets are the measurements, one per target; with more than one
	// round, each is the median over the rounds (medianStreamTarget).
	Targets []StreamTarget `json:"targets"`
	// Rounds holds every round's measurements when there was more than
	// one round.
	Rounds [][]StreamTarget `json:"rounds,omitempty"`
	// Skipped lists targets that did not run, with why.
	Skipped map[string]string `json:"skipped,omitempty"`
}

// bareNotStreaming is why the stream scenario has no bare proxy.
const bareNotStreaming = "the bare fasthttp proxy reads each answer whole before it sends it on (HostClient.Do), so it is no streaming baseline"

// Stream measures how long an SSE stream's events take to reach the
// agent, directly from the upstream, through ballast and through nginx
// when it is on PATH (with proxy_buffering off, as in front of any SSE
// endpoint): an open loop of opts.Rate model-style POSTs a second, each
// answered with opts.StreamEvents events opts.StreamInterval apart, every
// event stamped by the upstream with the moment it was written. It
// reports the time to each stream's first event, each event's delay from
// upstream to agent, and each target's CPU per 1,000 events.
//
// ballast runs the overhead scenario's chain, its validate policy taking
// text/event-stream answers too. With opts.Rounds above 1 every target is
// measured once per round, taking turns, and the report gives medians.
func Stream(ctx context.Context, opts Options) (*StreamResult, error) {
	if err := opts.only("stream"); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults(StreamDefaultRate)
	if err != nil {
		return nil, err
	}
	opts = opts.withStreamDefaults()
	if err := CheckStream(opts); err != nil {
		return nil, err
	}
	known := []string{TargetDirect, TargetBallast, TargetNginx}
	for _, t := range opts.Targets {
		if t == TargetBare {
			return nil, fmt.Errorf("%w: stream target bare: %s", ErrLoad, bareNotStreaming)
		}
		if !slices.Contains(known, t) {
			return nil, fmt.Errorf("%w: unknown stream target %q (known: direct, ballast, nginx)", ErrLoad, t)
		}
	}
	want := func(name string) bool { return len(opts.Targets) == 0 || slices.Contains(opts.Targets, name) }
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	res := &StreamResult{Settings: opts.settings(), Events: opts.StreamEvents, Interval: opts.StreamInterval.String(),
		Skipped: map[string]string{}}
	res.Settings.Saturation = ""
	res.Settings.Rounds = opts.Rounds
	fmt.Fprintf(opts.Progress, "stream: starting upstream (%d events, %v apart)\n", opts.StreamEvents, opts.StreamInterval)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed,
		StreamEvents: opts.StreamEvents, StreamInterval: opts.StreamInterval, StreamStamp: true})
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
	if want(TargetBallast) {
		p, _, err := startBallastWith(ctx, opts.Exe, dir, BallastConfig{Upstream: up.Addr, Stream: true, StreamTimeout: opts.Timeout}, opts.Procs)
		if err != nil {
			return nil, err
		}
		defer p.Stop()
		targets = append(targets, target{TargetBallast, p})
	}
	if want(TargetNginx) {
		if exe := NginxPath(); exe == "" {
			res.Skipped[TargetNginx] = "nginx is not on PATH"
		} else {
			p, err := startNginx(ctx, exe, dir, up.Addr, opts.Procs, opts.Connections, opts.Timeout)
			if err != nil {
				return nil, err
			}
			defer p.Stop()
			targets = append(targets, target{TargetNginx, p})
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: no stream target selected (known: direct, ballast, nginx)", ErrLoad)
	}

	res.Rounds, err = inTurns(opts.Rounds, len(targets), func(round, k int) (StreamTarget, error) {
		t := targets[k]
		fmt.Fprintf(opts.Progress, "%s%s open loop at %s streams/s for %v\n", roundPrefix("stream", round, opts.Rounds), t.name, fmtCount(opts.Rate), opts.Duration)
		return measureStream(ctx, opts, t.name, t.proc, up)
	})
	if err != nil {
		return nil, err
	}
	res.summarise()
	return res, nil
}

// withStreamDefaults fills the stream scenario's zero options.
func (o Options) withStreamDefaults() Options {
	if o.Rate <= 0 {
		o.Rate = StreamDefaultRate
	}
	if o.Connections <= 0 {
		o.Connections = 64
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.StreamEvents <= 0 {
		o.StreamEvents = StreamDefaultEvents
	}
	if o.StreamInterval <= 0 {
		o.StreamInterval = StreamDefaultInterval
	}
	return o
}

// CheckStream refuses stream scenario options (their zero values taken
// as the defaults) whose streams could not be measured: an ErrLoad error
// for each problem, joined. Every stream lasts StreamEvents ×
// StreamInterval at the upstream, so a Timeout no longer than that
// times every stream out; and Rate such streams a second keep Rate ×
// StreamEvents × StreamInterval of them open, which must fit in
// Connections, or the driver, not the target, holds them back and the
// first-event times measure its queue. Stream calls it first; the
// command line calls it before any scenario runs.
func CheckStream(o Options) error {
	o = o.withStreamDefaults()
	length := time.Duration(o.StreamEvents) * o.StreamInterval
	if o.StreamEvents > 0 && length/time.Duration(o.StreamEvents) != o.StreamInterval {
		length = math.MaxInt64 // overflowed
	}
	var errs []error
	if length >= o.Timeout {
		errs = append(errs, fmt.Errorf("%w: stream: each stream lasts events × interval = %d × %v = %v at the upstream, not less than the timeout %v: every stream would time out",
			ErrLoad, o.StreamEvents, o.StreamInterval, length, o.Timeout))
	}
	if open := o.Rate * length.Seconds(); open > float64(o.Connections) {
		errs = append(errs, fmt.Errorf("%w: stream: rate × events × interval = %g × %d × %v = %.0f streams open at once, above the %d connections: the driver, not the target, would hold streams back; lower the rate or raise the connections",
			ErrLoad, o.Rate, o.StreamEvents, o.StreamInterval, open, o.Connections))
	}
	return errors.Join(errs...)
}

// measureStream runs the open loop of streams against one target, reading
// CPU around the measured window.
func measureStream(ctx context.Context, opts Options, name string, proc, up *Process) (StreamTarget, error) {
	st := StreamTarget{Name: name}
	var before, upBefore ProcUsage
	var usageErr error
	load, err := RunStreamLoad(ctx, StreamLoadConfig{
		Addr: proc.Addr, Path: OverheadPath, Body: streamBody, Rate: opts.Rate, Connections: opts.Connections,
		Warmup: opts.Warmup, Duration: opts.Duration, Timeout: opts.Timeout, WantEvents: opts.StreamEvents,
		OnMeasure: func() {
			var e1, e2 error
			before, e1 = proc.Usage()
			upBefore, e2 = up.Usage()
			usageErr = errors.Join(e1, e2)
		},
	})
	if err != nil {
		return st, err
	}
	for _, p := range []*Process{proc, up} {
		if err := p.alive(); err != nil {
			return st, err
		}
	}
	after, e1 := proc.Usage()
	upAfter, e2 := up.Usage()
	if err := errors.Join(usageErr, e1, e2); err != nil {
		return st, fmt.Errorf("bench: %s: %w", name, err)
	}
	st.Load = load
	st.CPUPer1kEvents = per1k(after.CPU-before.CPU, load.WindowEvents)
	st.UpstreamCPUPer1kEvents = per1k(upAfter.CPU-upBefore.CPU, load.WindowEvents)
	st.PeakRSS = after.PeakRSS
	return st, ctx.Err()
}

// summarise fills the comparisons from r.Rounds: with one round, Targets
// is that round; with more, Targets are the medians.
func (r *StreamResult) summarise() {
	if len(r.Rounds) == 0 {
		return
	}
	r.Targets, r.Rounds = summariseRounds(r.Rounds, compareStreams, medianStreamTarget)
}

// compareStreams fills the against-direct fields of targets, measured
// together.
func compareStreams(targets []StreamTarget) {
	direct := findStreamTarget(targets, TargetDirect)
	if direct == nil {
		return
	}
	for i := range targets {
		t := &targets[i]
		if t == direct {
			continue
		}
		t.AddedFirstEvent, t.AddedEventDelay = Percentiles{}, Percentiles{}
		if t.timed() && direct.timed() {
			t.AddedFirstEvent = subtract(t.Load.FirstEvent, direct.Load.FirstEvent)
			t.AddedEventDelay = subtract(t.Load.EventDelay, direct.Load.EventDelay)
		}
		t.CPURatio = ratio(t.CPUPer1kEvents, direct.CPUPer1kEvents)
	}
}

// timed reports whether t has times: they are of complete streams only,
// and read 0 without one.
func (t *StreamTarget) timed() bool { return t.Load.Complete > 0 }

// subtract is a's percentiles minus b's.
func subtract(a, b Percentiles) Percentiles {
	return Percentiles{P50: a.P50 - b.P50, P90: a.P90 - b.P90, P99: a.P99 - b.P99,
		P999: a.P999 - b.P999, Max: a.Max - b.Max, Mean: a.Mean - b.Mean}
}

// medianStreamTarget is one target's median over rounds: each figure's
// median on its own, over the rounds that measured it (the times over
// rounds with a complete stream, the CPU per event over rounds with
// events: the others read 0, which is no measurement), counts summed,
// and the highest peak RSS (the process runs every round, so that is its
// VmHWM at the end), as medianTarget has them.
func medianStreamTarget(runs []StreamTarget) StreamTarget {
	m := StreamTarget{Name: runs[0].Name}
	withEvents := slices.DeleteFunc(slices.Clone(runs), func(t StreamTarget) bool { return t.Load.WindowEvents == 0 })
	m.CPUPer1kEvents = medianOf(withEvents, func(t StreamTarget) float64 { return t.CPUPer1kEvents })
	m.UpstreamCPUPer1kEvents = medianOf(withEvents, func(t StreamTarget) float64 { return t.UpstreamCPUPer1kEvents })
	for _, t := range runs {
		m.PeakRSS = max(m.PeakRSS, t.PeakRSS)
	}
	loads := make([]StreamLoadResult, len(runs))
	m.Load.Errors = map[string]int64{}
	for i, t := range runs {
		loads[i] = t.Load
		m.Load.Streams += t.Load.Streams
		m.Load.Complete += t.Load.Complete
		m.Load.Events += t.Load.Events
		m.Load.WindowEvents += t.Load.WindowEvents
		for k, v := range t.Load.Errors {
			m.Load.Errors[k] += v
		}
	}
	pick := func(loads []StreamLoadResult, f func(StreamLoadResult) Percentiles) Percentiles {
		ps := make([]Percentiles, len(loads))
		for i, l := range loads {
			ps[i] = f(l)
		}
		return medianPercentiles(ps)
	}
	timed := slices.DeleteFunc(slices.Clone(loads), func(l StreamLoadResult) bool { return l.Complete == 0 })
	m.Load.FirstEvent = pick(timed, func(l StreamLoadResult) Percentiles { return l.FirstEvent })
	m.Load.EventDelay = pick(timed, func(l StreamLoadResult) Percentiles { return l.EventDelay })
	m.Load.Stream = pick(timed, func(l StreamLoadResult) Percentiles { return l.Stream })
	m.Load.ScheduleLag = pick(loads, func(l StreamLoadResult) Percentiles { return l.ScheduleLag })
	return m
}

// findStreamTarget is the target named name in targets, or nil.
func findStreamTarget(targets []StreamTarget, name string) *StreamTarget {
	for i := range targets {
		if targets[i].Name == name {
			return &targets[i]
		}
	}
	return nil
}
