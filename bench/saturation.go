package bench

import (
	"context"
	"errors"
	"fmt"
)

// Saturation drivers (Options.Driver).
const (
	// DriverAuto is wrk when it is on PATH, else the Go driver.
	DriverAuto = "auto"
	// DriverGo is RunLoad's closed loop.
	DriverGo = "go"
	// DriverWrk is `wrk -t1 -c<Connections>`: one C thread on epoll,
	// about one core, the reference client.
	DriverWrk = "wrk"
)

// ErrDriver reports a saturation driver that is unknown or not installed.
var ErrDriver = errors.New("bench: saturation driver")

// CheckDriver accepts the known driver names and "" (auto); anything else
// is an ErrDriver error. It does not look for wrk on PATH.
func CheckDriver(driver string) error {
	switch driver {
	case "", DriverAuto, DriverGo, DriverWrk:
		return nil
	}
	return fmt.Errorf("%w: unknown driver %q (known: auto, go, wrk)", ErrDriver, driver)
}

// resolveDriver turns driver into DriverGo or DriverWrk: auto ("" too)
// picks wrk when lookPath finds it (exec.LookPath in production), and wrk
// asked for by name must be found.
func resolveDriver(driver string, lookPath func(string) (string, error)) (string, error) {
	if err := CheckDriver(driver); err != nil {
		return "", err
	}
	if driver == DriverGo {
		return DriverGo, nil
	}
	_, err := lookPath("wrk")
	switch {
	case err == nil:
		return DriverWrk, nil
	case driver == DriverWrk:
		return "", fmt.Errorf("%w: wrk is not on PATH (install it, e.g. apt-get install wrk, or use --driver go): %w", ErrDriver, err)
	}
	return DriverGo, nil
}

// saturate runs a closed-loop phase with driver, DriverGo or DriverWrk,
// against target.
//
// wrk sees statuses, never header fields, so it cannot tell ballast's
// degraded answers (degradedClass) from the route's; a Lua response()
// hook could, at a cost per answer that would come off the throughput it
// measures. Against ballast (target.Admin set), the stale answers are
// counted instead from ballast's /metrics, read just before wrk's measured
// run and after it (staleServed), and taken from wrk's successes: at most
// all of them, since the count may include answers to requests wrk did
// not finish. The answers of a static_fallback, which ballast counts
// nowhere, stay among the successes when their status is below 400
// (userConfig.wrkBlindSpots says so in the report).
func saturate(ctx context.Context, driver string, cfg LoadConfig, target *Process) (LoadResult, error) {
	if driver != DriverWrk {
		return RunLoad(ctx, cfg)
	}
	if target == nil || target.Admin == "" {
		return runWrk(ctx, cfg)
	}
	var before int64
	var beforeErr error
	onMeasure := cfg.OnMeasure
	cfg.OnMeasure = func() {
		before, beforeErr = staleServed(target, cfg.Timeout)
		if onMeasure != nil {
			onMeasure()
		}
	}
	res, err := runWrk(ctx, cfg)
	if err != nil {
		return res, err
	}
	if beforeErr != nil {
		return res, beforeErr
	}
	after, err := staleServed(target, cfg.Timeout)
	if err != nil {
		return res, err
	}
	res.takeStale(after - before)
	return res, nil
}

// takeStale moves n of a wrk run's successes (at most all of them) to the
// class classStale.
func (r *LoadResult) takeStale(n int64) {
	n = min(n, r.All.OK)
	if n <= 0 {
		return
	}
	errs := map[string]int64{classStale: n}
	for class, v := range r.All.Errors {
		errs[class] += v
	}
	r.All.OK -= n
	r.All.Errors = errs
	for i := range r.Workloads { // wrk's one workload is All, named
		name := r.Workloads[i].Name
		r.Workloads[i] = r.All
		r.Workloads[i].Name = name
	}
}
