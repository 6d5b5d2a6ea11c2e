package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// State store names; StoreUnkeyed is the baseline (requests without an
// Idempotency-Key through the memory-store config).
const (
	StoreUnkeyed = "unkeyed"
	StoreMemory  = "memory"
	StoreFile    = "file"
	StoreRedis   = "redis"
)

// StateStores lists the state scenario's targets in run order.
func StateStores() []string { return []string{StoreUnkeyed, StoreMemory, StoreFile, StoreRedis} }

// StateTarget is one store's closed-loop run.
type StateTarget struct {
	Name string `json:"name"`
	// Config is the state and idempotency config, in one line.
	Config string     `json:"config"`
	Load   LoadResult `json:"load"`
	// RPSRatio is Load.RPS over unkeyed's (zero for unkeyed itself).
	RPSRatio float64 `json:"rps_ratio"`
	// CPUPer1k is ballast's CPU per 1,000 requests in the measured window
	// (ms); UpstreamCPUPer1k the upstream's; StoreCPUPer1k redis-server's
	// (zero for the other stores, whose cost is ballast's own).
	CPUPer1k         float64 `json:"cpu_ms_per_1k"`
	UpstreamCPUPer1k float64 `json:"upstream_cpu_ms_per_1k"`
	StoreCPUPer1k    float64 `json:"store_cpu_ms_per_1k"`
	// PeakRSS is ballast's VmHWM in bytes at the end.
	PeakRSS int64 `json:"peak_rss_bytes"`
}

// StateResult is the state scenario's report.
type StateResult struct {
	Settings Settings `json:"settings"`
	// Targets are the measurements, one per store, unkeyed first. With
	// more than one round, each is the median over the rounds, and its
	// ratio is of the medians.
	Targets []StateTarget `json:"targets"`
	// Rounds holds every round's measurements, stores in the order of
	// Targets, each with its ratio against that round's unkeyed, when
	// there was more than one round.
	Rounds [][]StateTarget `json:"rounds,omitempty"`
	// Skipped names stores that did not run, with why.
	Skipped map[string]string `json:"skipped,omitempty"`
}

// stateWorkload POSTs with a fresh Idempotency-Key per request when keyed.
func stateWorkload(keyed bool) []Workload {
	w := Workload{Name: "keyed", Method: "POST", Path: "/v1/orders", Body: []byte(`{"item":42,"qty":1}`), ContentType: "application/json"}
	if keyed {
		w.KeyHeader = "Idempotency-Key"
	} else {
		w.Name = "unkeyed"
	}
	return []Workload{w}
}

// State measures keyed throughput through ballast with idempotency in
// header mode on each state store, against unkeyed requests, in one run:
// closed loop with opts.Connections for opts.Duration, one fresh ballast
// child per store. redis runs when redis-server is on PATH (started on a
// free port without persistence). opts.Targets limits the stores
// (unkeyed always runs: it is the baseline).
//
// With opts.Rounds above 1, every store is measured once per round, the
// stores taking turns as the overhead scenario's targets do; the file
// store starts empty each time. The report gives each store's medians and
// every round's ratios.
func State(ctx context.Context, opts Options) (*StateResult, error) {
	if err := opts.only("state"); err != nil {
		return nil, err
	}
	if opts.Procs == 0 {
		opts.Procs = 2 // ballast's choice with the file store, for every store
	}
	opts, err := opts.withDefaults(PoliciesDefaultRate)
	if err != nil {
		return nil, err
	}
	for _, t := range opts.Targets {
		if !slices.Contains(StateStores(), t) {
			return nil, fmt.Errorf("%w: unknown state store %q (known: %s)", ErrLoad, t, strings.Join(StateStores(), ", "))
		}
	}
	res := &StateResult{Settings: opts.settings(), Skipped: map[string]string{}}
	res.Settings.Saturation, res.Settings.Rate = "", 0
	res.Settings.Rounds = opts.Rounds
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(opts.Progress, "state: starting upstream (%d-byte answers, profile none)\n", opts.Size)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed})
	if err != nil {
		return nil, err
	}
	defer up.Stop()
	var names []string
	for _, name := range StateStores() {
		if name != StoreUnkeyed && len(opts.Targets) > 0 && !slices.Contains(opts.Targets, name) {
			continue
		}
		if name == StoreRedis && RedisPath() == "" {
			res.Skipped[name] = "redis-server is not on PATH"
			continue
		}
		names = append(names, name)
	}
	res.Rounds, err = inTurns(opts.Rounds, len(names), func(round, k int) (StateTarget, error) {
		return runStore(ctx, opts, dir, names[k], up, roundPrefix("state", round, opts.Rounds))
	})
	if err != nil {
		return nil, err
	}
	res.summarise()
	return res, nil
}

// runStore measures one store (State): it starts the store's process
// (redis-server) when it has one, and removes the file store's files
// after the run, so that every round of the file store starts empty.
func runStore(ctx context.Context, opts Options, dir, name string, up *Process, progress string) (StateTarget, error) {
	var store *Process
	state := "state: {max_records: 10000000}"
	switch name {
	case StoreFile:
		path := filepath.Join(dir, "state.db")
		state = fmt.Sprintf("state: {path: %s, max_records: 10000000}", path)
		defer func() {
			files, _ := filepath.Glob(path + "*")
			for _, f := range files {
				_ = os.Remove(f)
			}
		}()
	case StoreRedis:
		var err error
		if store, err = startRedis(ctx, RedisPath()); err != nil {
			return StateTarget{}, err
		}
		defer store.Stop()
		state = fmt.Sprintf(`state: {backend: redis, redis: {address: %s, key_prefix: "bench:"}}`, store.Addr)
	}
	st, err := runStateTarget(ctx, opts, dir, name, state, up, store, progress)
	// The report shows where, not this run's temporary names.
	st.Config = strings.NewReplacer(dir, "<tmp>", addrOf(store), "127.0.0.1:<free port>").Replace(st.Config)
	return st, err
}

// summarise fills the comparisons from r.Rounds: with one round, Targets
// is that round; with more, Targets are each store's medians
// (medianStateTarget) and each round keeps its own ratios against its
// own unkeyed run.
func (r *StateResult) summarise() {
	if len(r.Rounds) == 0 {
		return
	}
	r.Targets, r.Rounds = summariseRounds(r.Rounds, compareStores, medianStateTarget)
}

// medianStateTarget summarises one store's rounds as medianTarget does an
// overhead target's: the median of each figure, taken separately,
// requests and errors added up, and the highest peak RSS.
func medianStateTarget(runs []StateTarget) StateTarget {
	m := StateTarget{Name: runs[0].Name, Config: runs[0].Config}
	m.CPUPer1k = medianOf(runs, func(t StateTarget) float64 { return t.CPUPer1k })
	m.UpstreamCPUPer1k = medianOf(runs, func(t StateTarget) float64 { return t.UpstreamCPUPer1k })
	m.StoreCPUPer1k = medianOf(runs, func(t StateTarget) float64 { return t.StoreCPUPer1k })
	loads := make([]LoadResult, len(runs))
	for i, t := range runs {
		loads[i] = t.Load
		m.PeakRSS = max(m.PeakRSS, t.PeakRSS)
	}
	m.Load = medianLoad(loads)
	return m
}

func runStateTarget(ctx context.Context, opts Options, dir, name, state string, up, store *Process, progress string) (StateTarget, error) {
	const policy = offPolicy + "idempotency: {mode: header}\n"
	top := "log: {requests: false}\n" + state + "\n"
	st := StateTarget{Name: name, Config: strings.TrimSpace(state) + "; idempotency: {mode: header}"}
	if name == StoreUnkeyed {
		st.Config += "; no Idempotency-Key sent"
	}
	bl, err := startSmallBallast(ctx, opts.Exe, dir, "state-"+name, smallConfig{Upstream: up.Addr, Top: top, Policy: policy}, false, opts.Procs)
	if err != nil {
		return st, err
	}
	defer bl.Stop()
	procs := []*Process{bl, up}
	if store != nil {
		procs = append(procs, store)
	}
	before := make([]ProcUsage, len(procs))
	var usageErr error
	fmt.Fprintf(opts.Progress, "%s%s closed loop, %d connections for %v\n", progress, name, opts.Connections, opts.Duration)
	lr, err := RunLoad(ctx, LoadConfig{
		Addr: bl.Addr, Workloads: stateWorkload(name != StoreUnkeyed), Connections: opts.Connections,
		Warmup: opts.Warmup, Duration: opts.Duration, Timeout: opts.Timeout,
		OnMeasure: func() {
			for i, p := range procs {
				var e error
				before[i], e = p.Usage()
				usageErr = errors.Join(usageErr, e)
			}
		},
	})
	if err != nil {
		return st, err
	}
	for _, p := range procs {
		if err := p.alive(); err != nil {
			return st, err
		}
	}
	cpu := make([]float64, len(procs))
	for i, p := range procs {
		after, e := p.Usage()
		usageErr = errors.Join(usageErr, e)
		cpu[i] = per1k(after.CPU-before[i].CPU, lr.All.Requests)
		if i == 0 {
			st.PeakRSS = after.PeakRSS
		}
	}
	if usageErr != nil {
		return st, fmt.Errorf("bench: state %s: %w", name, usageErr)
	}
	st.Load, st.CPUPer1k, st.UpstreamCPUPer1k = lr, cpu[0], cpu[1]
	if store != nil {
		st.StoreCPUPer1k = cpu[2]
	}
	return st, ctx.Err()
}

// compare fills RPSRatio of r.Targets against unkeyed.
func (r *StateResult) compare() { compareStores(r.Targets) }

// compareStores fills RPSRatio against unkeyed for stores measured
// together; nothing when unkeyed is not among them.
func compareStores(targets []StateTarget) {
	i := slices.IndexFunc(targets, func(t StateTarget) bool { return t.Name == StoreUnkeyed })
	if i < 0 {
		return
	}
	base := targets[i].Load.RPS
	for i := range targets {
		if targets[i].Name != StoreUnkeyed {
			targets[i].RPSRatio = ratio(targets[i].Load.RPS, base)
		}
	}
}

// addrOf is p's address, or a string no config contains.
func addrOf(p *Process) string {
	if p == nil {
		return "\x00"
	}
	return p.Addr
}
