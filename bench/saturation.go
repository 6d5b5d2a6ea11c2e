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

// saturate runs a closed-loop phase with driver, DriverGo or DriverWrk.
func saturate(ctx context.Context, driver string, cfg LoadConfig) (LoadResult, error) {
	if driver == DriverWrk {
		return runWrk(ctx, cfg)
	}
	return RunLoad(ctx, cfg)
}
