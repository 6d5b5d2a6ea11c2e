package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// wrkWaitDelay is how long wrk may take to print its report after an
// interrupt before it is killed.
const wrkWaitDelay = 3 * time.Second

// runWrk is RunLoad's closed loop run by wrk (`wrk -t1 -c<Connections>`):
// one C thread on epoll, about one core, where RunLoad's goroutines take
// more of a small machine from the target under test. cfg.Rate must be 0:
// wrk has no open loop without coordinated omission.
//
// wrk sends one request over and over, so cfg.Workloads must be a single
// workload without KeyHeader, UniqueBody or Valid; its Method, Body and
// ContentType go into a small Lua script (static: wrk builds the request
// once). Anything else is an ErrLoad error — no silent switch to the Go
// driver, since the figures would then mean something else.
//
// wrk counts time in whole seconds: Warmup, Duration and Timeout are
// rounded up to the next second (at least 1s). A positive Warmup runs wrk
// once first and discards its report; OnMeasure is called just before
// the measured run starts. The result has one workload, named after
// cfg.Workloads[0]; see parseWrk for how wrk's figures map onto it. When
// ctx ends, wrk is interrupted and prints what it measured, which runWrk
// returns; if it cannot, runWrk returns ctx's error.
func runWrk(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if err := checkWrkConfig(cfg); err != nil {
		return LoadResult{}, err
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	script, err := writeWrkScript(cfg.Workloads[0])
	if err != nil {
		return LoadResult{}, err
	}
	if script != "" {
		defer os.Remove(script)
	}
	if cfg.Warmup > 0 {
		if _, err := execWrk(ctx, wrkArgs(cfg, script, cfg.Warmup)); err != nil {
			return LoadResult{}, interrupted(ctx, err)
		}
	}
	if cfg.OnMeasure != nil {
		cfg.OnMeasure()
	}
	out, runErr := execWrk(ctx, wrkArgs(cfg, script, cfg.Duration))
	if runErr != nil && ctx.Err() == nil {
		return LoadResult{}, runErr
	}
	res, err := parseWrk(out)
	if err != nil {
		return LoadResult{}, interrupted(ctx, err)
	}
	w := res.All
	w.Name = cfg.Workloads[0].Name
	res.Workloads = []WorkloadResult{w}
	return res, nil
}

// interrupted is ctx's error when ctx has ended (what wrk did then does
// not matter), else err.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("bench: wrk interrupted: %w", ctx.Err())
	}
	return err
}

// checkWrkConfig rejects what wrk cannot run as RunLoad would.
func checkWrkConfig(cfg LoadConfig) error {
	switch {
	case cfg.Addr == "" || cfg.Duration <= 0:
		return fmt.Errorf("%w: wrk needs an address and a positive duration", ErrLoad)
	case cfg.Rate != 0:
		return fmt.Errorf("%w: wrk runs closed loop only (rate %v)", ErrLoad, cfg.Rate)
	case len(cfg.Workloads) != 1:
		return fmt.Errorf("%w: wrk sends one kind of request, got %d workloads", ErrLoad, len(cfg.Workloads))
	}
	wl := cfg.Workloads[0]
	switch {
	case wl.KeyHeader != "" || wl.UniqueBody:
		return fmt.Errorf("%w: workload %q: wrk cannot vary keys or bodies per request", ErrLoad, wl.Name)
	case wl.Valid != nil:
		return fmt.Errorf("%w: workload %q: wrk cannot check answers with Valid", ErrLoad, wl.Name)
	case !strings.HasPrefix(wl.Path, "/") || strings.ContainsFunc(wl.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("%w: workload %q: path %q must start with / and hold no spaces or control characters", ErrLoad, wl.Name, wl.Path)
	case strings.ContainsFunc(wl.Method, func(r rune) bool { return r < 'A' || r > 'Z' }):
		return fmt.Errorf("%w: workload %q: method %q must be upper-case letters", ErrLoad, wl.Name, wl.Method)
	}
	return nil
}

// wrkScript is the Lua that sets wl's method, body and content type, or
// "" for a plain GET (wrk's default request).
func wrkScript(wl Workload) string {
	var b strings.Builder
	if wl.Method != "" && wl.Method != "GET" {
		b.WriteString("wrk.method = " + luaString([]byte(wl.Method)) + "\n")
	}
	if wl.Body != nil {
		b.WriteString("wrk.body = " + luaString(wl.Body) + "\n")
	}
	if wl.ContentType != "" {
		b.WriteString(`wrk.headers["Content-Type"] = ` + luaString([]byte(wl.ContentType)) + "\n")
	}
	return b.String()
}

// writeWrkScript writes wrkScript(wl) to a temporary file and returns its
// path, or "" when no script is needed. The caller removes the file.
func writeWrkScript(wl Workload) (string, error) {
	script := wrkScript(wl)
	if script == "" {
		return "", nil
	}
	f, err := os.CreateTemp("", "ballast-wrk-*.lua")
	if err != nil {
		return "", fmt.Errorf("bench: wrk script: %w", err)
	}
	_, err = f.WriteString(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("bench: wrk script: %w", err)
	}
	return f.Name(), nil
}

// luaString quotes b as a Lua string literal: printable ASCII as is,
// every other byte, the quote and the backslash as \ddd escapes.
func luaString(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		if c >= ' ' && c <= '~' && c != '"' && c != '\\' {
			s.WriteByte(c)
		} else {
			fmt.Fprintf(&s, "\\%03d", c)
		}
	}
	s.WriteByte('"')
	return s.String()
}

// wrkSeconds is d in wrk's whole seconds, rounded up, at least 1.
func wrkSeconds(d time.Duration) string {
	s := max((d+time.Second-1)/time.Second, 1)
	return strconv.FormatInt(int64(s), 10) + "s"
}

// wrkArgs are the arguments of one wrk run of length d.
func wrkArgs(cfg LoadConfig, script string, d time.Duration) []string {
	args := []string{"-t1", "-c" + strconv.Itoa(cfg.Connections), "-d" + wrkSeconds(d),
		"--timeout", wrkSeconds(cfg.Timeout), "--latency"}
	if script != "" {
		args = append(args, "-s", script)
	}
	return append(args, "http://"+cfg.Addr+cfg.Workloads[0].Path)
}

// execWrk runs wrk with args and returns its standard output. When ctx
// ends, wrk gets SIGINT (it then stops and prints its report) and is
// killed wrkWaitDelay later if still running.
func execWrk(ctx context.Context, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "wrk", args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = wrkWaitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w: wrk %s: %w: %s", ErrLoad, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
