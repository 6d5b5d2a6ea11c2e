package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// profileSeconds is how long a CPU profile taken over a measured window d
// lasts: d rounded down to whole seconds (/debug/pprof/profile counts
// whole seconds), at least 1, so that it never runs past a window of a
// second or more.
func profileSeconds(d time.Duration) int { return max(1, int(d/time.Second)) }

// cpuProfilePath is the file of ballast's CPU profile in dir for one
// round (1-based) of the overhead scenario (variant "") or of a policies
// variant: ballast-cpu-<round>.pprof or ballast-cpu-<variant>-<round>.pprof.
func cpuProfilePath(dir, variant string, round int) string {
	name := "ballast-cpu-"
	if variant != "" {
		name += variant + "-"
	}
	return filepath.Join(dir, name+strconv.Itoa(round)+".pprof")
}

// makeProfileDir creates dir (and its parents) for CPU profiles.
func makeProfileDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: CPU profiles: %w", err)
	}
	return nil
}

// maxProfileBytes bounds a profile read from ballast: a CPU profile of
// minutes is a few hundred KiB.
const maxProfileBytes = 64 << 20

// fetchCPUProfile asks the admin listener of ballast child p for a CPU
// profile of seconds (GET /debug/pprof/profile?seconds=N, with p's admin
// token when it has one: /debug/pprof/ is behind it, or, without one,
// open to loopback Hosts only) and writes it to file. It returns when
// the profile is written, after about seconds, or at once when ctx ends
// (the request is then abandoned). Anything but a 200 answer carrying a
// gzipped profile is an error, and no file is left.
func fetchCPUProfile(ctx context.Context, p *Process, seconds int, file string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("bench: %s: CPU profile: %w", p.Name, err)
		}
	}()
	if p.Admin == "" {
		return errors.New("no admin listener")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+readyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+p.Admin+"/debug/pprof/profile?seconds="+strconv.Itoa(seconds), nil)
	if err != nil {
		return err
	}
	if p.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+p.AdminToken)
	}
	// No Proxy: HTTP_PROXY must not take a loopback request elsewhere.
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := bufio.NewReader(io.LimitReader(resp.Body, maxProfileBytes))
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(body, 300))
		return fmt.Errorf("%s answered %s: %s", p.Admin, resp.Status, strings.TrimSpace(string(msg)))
	}
	// A CPU profile is gzipped protobuf; anything else (an error page, an
	// empty answer) is not one.
	if magic, err := body.Peek(2); err != nil || magic[0] != 0x1f || magic[1] != 0x8b {
		return fmt.Errorf("%s answered 200 without a gzipped profile (%v)", p.Admin, err)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(file)
	}
	return err
}
