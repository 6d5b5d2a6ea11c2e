package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"time"
)

// ChaosDefaultRate is the chaos scenario's open-loop rate.
const ChaosDefaultRate = 200

// ChaosWorkload is one workload's outcome through one target.
type ChaosWorkload struct {
	WorkloadResult
	// SuccessRate is what the agent saw: 2xx with a valid JSON body.
	SuccessRate float64 `json:"success_rate"`
	// UpstreamAttempts counts requests the upstream received for this
	// workload's measured operations (retries included).
	UpstreamAttempts int64 `json:"upstream_attempts"`
	// Duplicates counts side effects beyond the first per operation key.
	Duplicates int64 `json:"duplicate_side_effects"`
}

// ChaosTarget is the chaos scenario through one target.
type ChaosTarget struct {
	Name      string          `json:"name"`
	RPS       float64         `json:"rps"`
	Workloads []ChaosWorkload `json:"workloads"`
	// Faults counts what the upstream injected, by fault.
	Faults map[string]int64 `json:"faults"`
	// EvictedKeys counts operation keys the upstream's counters dropped
	// during the run (Counters.EvictedKeys). Zero unless the run
	// outgrew chaosMaxKeys; above zero, UpstreamAttempts and Duplicates
	// are lower bounds, and the report says so.
	EvictedKeys int64 `json:"evicted_keys,omitempty"`
}

// ChaosResult is the chaos scenario's report.
type ChaosResult struct {
	Settings Settings `json:"settings"`
	// Profile is the upstream's fault profile.
	Profile Profile `json:"profile"`
	// BallastFeatures are the optional config blocks ballast accepted
	// (retry, validate, idempotency); empty means ballast ran pass-through.
	BallastFeatures []string      `json:"ballast_features"`
	Targets         []ChaosTarget `json:"targets"`
}

// chaosWorkloads are the three kinds of agent calls: idempotent GETs,
// POSTs with an Idempotency-Key, and model-style POSTs.
func chaosWorkloads() []Workload {
	valid := func(ct, body []byte) bool { return bytes.Contains(ct, []byte("json")) && json.Valid(body) }
	return []Workload{
		{Name: "get", Method: "GET", Path: "/v1/items/42", KeyHeader: "X-Bench-Op", Valid: valid},
		{Name: "keyed", Method: "POST", Path: "/v1/orders", Body: []byte(`{"item":42,"qty":1}`),
			ContentType: "application/json", KeyHeader: "Idempotency-Key", Valid: valid},
		{Name: "model", Method: "POST", Path: "/v1/chat/completions", Body: modelBody,
			ContentType: "application/json", KeyHeader: "X-Bench-Op", Valid: valid},
	}
}

// Chaos runs the three workloads open-loop under the standard fault
// profile, directly and through ballast, with the same seed so both see
// the same faults for the same operation. Retries, validation and
// idempotency in ballast's config are used when the config package accepts
// them (see ballast.yaml.tmpl); until then ballast runs pass-through and
// shows direct's failure rate.
func Chaos(ctx context.Context, opts Options) (*ChaosResult, error) {
	if err := opts.only("chaos"); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults(ChaosDefaultRate)
	if err != nil {
		return nil, err
	}
	if err := CheckChaos(opts); err != nil {
		return nil, err
	}
	profile, err := NamedProfile("standard")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ballast-bench")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(opts.Progress, "chaos: starting upstream (profile %s, seed %d)\n", profile.Name, opts.Seed)
	up, err := startUpstream(ctx, opts.Exe, UpstreamConfig{Size: opts.Size, Seed: opts.Seed, Profile: profile, MaxKeys: chaosMaxKeys(opts)})
	if err != nil {
		return nil, err
	}
	defer up.Stop()
	bl, features, err := startBallast(ctx, opts.Exe, dir, up.Addr, true, opts.Procs)
	if err != nil {
		return nil, err
	}
	defer bl.Stop()

	res := &ChaosResult{Settings: opts.settings(), Profile: profile, BallastFeatures: features}
	if res.BallastFeatures == nil {
		res.BallastFeatures = []string{}
	}
	admin := newClient(up.Addr, 2, 5*time.Second, nil)
	defer admin.CloseIdleConnections()
	for _, t := range []struct{ name, addr string }{{TargetDirect, up.Addr}, {TargetBallast, bl.Addr}} {
		if err := ResetCounters(admin, up.Addr); err != nil {
			return nil, err
		}
		fmt.Fprintf(opts.Progress, "chaos: %s open loop at %.0f rps for %v\n", t.name, opts.Rate, opts.Duration)
		lr, err := RunLoad(ctx, LoadConfig{
			Addr: t.addr, Workloads: chaosWorkloads(), Rate: opts.Rate, Connections: chaosConcurrency(opts),
			Warmup: opts.Warmup, Duration: opts.Duration, Timeout: opts.Timeout,
		})
		if err != nil {
			return nil, err
		}
		// A dead target must not pass for one that failed every request.
		for _, p := range []*Process{up, bl} {
			if err := p.alive(); err != nil {
				return nil, err
			}
		}
		c, err := FetchCounters(admin, up.Addr)
		if err != nil {
			return nil, err
		}
		res.Targets = append(res.Targets, chaosTarget(t.name, lr, c))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// chaosMaxKeys is the upstream's key bound for a chaos run: every
// operation key of one target's run (one per scheduled request, warm-up
// included; the counters are reset between targets), so that no key is
// evicted and the duplicates are exact.
func chaosMaxKeys(o Options) int {
	return max(DefaultMaxKeys, int(math.Ceil(o.Rate*(o.Warmup+o.Duration).Seconds()))+64)
}

// CheckChaos refuses chaos options (zero Rate and Timeout taken as their
// defaults) that would keep more than maxChaosInFlight requests in
// flight: an ErrLoad error. Chaos calls it first; the command line calls
// it before any scenario runs, so that `bench all` does not measure the
// others for minutes and then refuse chaos.
func CheckChaos(o Options) error {
	rate, timeout := o.Rate, o.Timeout
	if rate <= 0 {
		rate = ChaosDefaultRate
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if inFlight := rate * timeout.Seconds(); inFlight > maxChaosInFlight {
		return fmt.Errorf("%w: chaos keeps up to rate × timeout = %.0f requests in flight, above %d: lower the rate or the timeout",
			ErrLoad, inFlight, maxChaosInFlight)
	}
	return nil
}

// maxChaosInFlight bounds chaosConcurrency: one goroutine and one
// connection each, about 1 GiB of the harness and the targets at 20,000.
const maxChaosInFlight = 20_000

// chaosConcurrency lets every request of the open loop be in flight until
// its timeout: agents are independent, so a slow answer must not hold back
// the next agent's request (that would measure the driver's cap, not the
// target).
func chaosConcurrency(o Options) int {
	return max(o.Connections, int(o.Rate*o.Timeout.Seconds())+1)
}

func chaosTarget(name string, lr LoadResult, c Counters) ChaosTarget {
	ct := ChaosTarget{Name: name, RPS: lr.RPS, Faults: c.Faults, EvictedKeys: c.EvictedKeys}
	for _, w := range lr.Workloads {
		prefix := w.Name + "-"
		cw := ChaosWorkload{WorkloadResult: w, SuccessRate: w.SuccessRate(), Duplicates: c.Duplicates(prefix)}
		for k, v := range c.Keys {
			if strings.HasPrefix(k, prefix) {
				cw.UpstreamAttempts += v.Arrivals
			}
		}
		ct.Workloads = append(ct.Workloads, cw)
	}
	return ct
}
