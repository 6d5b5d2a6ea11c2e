package bench

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestProfileSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{
		0: 1, 300 * time.Millisecond: 1, time.Second: 1, 1999 * time.Millisecond: 1, 10 * time.Second: 10, 5 * time.Minute: 300,
	} {
		if got := profileSeconds(d); got != want {
			t.Errorf("profileSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// TestCPUProfiles fetches ballast's CPU profiles from real ballast
// children and reads them with go tool pprof.
func TestCPUProfiles(t *testing.T) {
	exe := buildBallast(t)
	opts := Options{Exe: exe, Duration: 300 * time.Millisecond, Warmup: -1, Saturation: -1,
		Rate: 150, Connections: 4, Timeout: time.Second, Driver: DriverGo}

	t.Run("overhead, one per round", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "made", "for", "profiles")
		o := opts
		o.Targets, o.Rounds, o.CPUProfileDir = []string{TargetBallast}, 2, dir
		res, err := Overhead(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{filepath.Join(dir, "ballast-cpu-1.pprof"), filepath.Join(dir, "ballast-cpu-2.pprof")}
		checkProfiles(t, res.CPUProfiles, want)
		var text strings.Builder
		if err := (&Report{Overhead: res}).WriteText(&text); err != nil || !strings.Contains(text.String(), "go tool pprof -top "+want[1]) {
			t.Errorf("the report does not say how to read the profiles (%v):\n%s", err, text.String())
		}
	})
	t.Run("policies, one per variant", func(t *testing.T) {
		dir := t.TempDir()
		o := opts
		o.Targets, o.CPUProfileDir = []string{"retry"}, dir
		res, err := Policies(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{filepath.Join(dir, "ballast-cpu-off-1.pprof"), filepath.Join(dir, "ballast-cpu-retry-1.pprof")}
		checkProfiles(t, res.CPUProfiles, want)
	})
	t.Run("a refused fetch fails the run", func(t *testing.T) {
		dir := t.TempDir()
		file, _ := writeUserConfig(t, dir, "token.yaml", `
admin: {token: "${BENCH_TEST_ADMIN}"}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: http://api.example.com
`)
		u, err := loadUserConfig(file)
		if err != nil {
			t.Fatal(err)
		}
		p, err := startUserBallast(context.Background(), exe, dir, u, "127.0.0.1:9", "", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		if p.AdminToken == "" || p.AdminToken == "admin-secret" {
			t.Fatalf("admin token %q, want the harness's own", p.AdminToken)
		}
		p.AdminToken = "wrong"
		profile := filepath.Join(dir, "refused.pprof")
		wl, _ := overheadWorkload("", "")
		_, err = measureTarget(context.Background(), opts, []Workload{wl}, TargetBallast, p, p, profile)
		if err == nil || !strings.Contains(err.Error(), "CPU profile") || !strings.Contains(err.Error(), "401") {
			t.Errorf("err = %v, want the refused profile", err)
		}
		if _, err := os.Stat(profile); !os.IsNotExist(err) {
			t.Errorf("a refused profile left a file: %v", err)
		}
	})
	// A ballast that dies under load takes its profile with it: the error
	// must say that it died, and how, not only that the fetch failed.
	t.Run("a child that dies is said, not its lost profile", func(t *testing.T) {
		var victim atomic.Pointer[Process]
		upstream := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
			if p := victim.Swap(nil); p != nil {
				_ = p.cmd.Process.Kill()
			}
			ctx.SetBodyString("{}")
		}}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() { _ = upstream.Serve(ln); close(served) }()
		defer func() { _ = upstream.Shutdown(); <-served }()

		dir := t.TempDir()
		file, _ := writeUserConfig(t, dir, "dies.yaml", `
routes:
  - name: r
    match: {path_prefix: /}
    upstream: http://api.example.com
`)
		u, err := loadUserConfig(file)
		if err != nil {
			t.Fatal(err)
		}
		p, err := startUserBallast(context.Background(), exe, dir, u, ln.Addr().String(), "", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		victim.Store(p)
		profile := filepath.Join(dir, "lost.pprof")
		wl, _ := overheadWorkload("", "")
		_, err = measureTarget(context.Background(), opts, []Workload{wl}, TargetBallast, p, p, profile)
		if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "exited during the run") {
			t.Errorf("err = %v, want ErrProcess saying ballast exited during the run", err)
		}
		if _, err := os.Stat(profile); !os.IsNotExist(err) {
			t.Errorf("a lost profile left a file: %v", err)
		}
	})
}

// checkProfiles checks that a run reported exactly the profiles want,
// and that each is a CPU profile go tool pprof reads.
func checkProfiles(t *testing.T, got, want []string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("profiles %q, want %q", got, want)
	}
	for _, f := range want {
		checkProfile(t, f)
	}
}

// checkProfile checks that file is a gzipped CPU profile go tool pprof
// reads.
func checkProfile(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("%s: %d bytes, %v; want a gzipped profile", file, len(b), err)
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Type: cpu") {
		t.Errorf("go tool pprof -top %s: %v\n%s", file, err, out)
	}
}

func TestCPUProfileDirIsRefusedWhereNoBallastIsProfiled(t *testing.T) {
	for _, scenario := range []string{"chaos", "state", "soak"} {
		if err := (Options{CPUProfileDir: "p"}).only(scenario); !errors.Is(err, ErrLoad) {
			t.Errorf("%s: err = %v, want ErrLoad", scenario, err)
		}
	}
	if err := (Options{CPUProfileDir: "p"}).only("policies"); err != nil {
		t.Errorf("policies: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "profiles")
	_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", CPUProfileDir: dir, Targets: []string{TargetDirect}, Saturation: -1})
	if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "ballast is not among the targets") {
		t.Errorf("overhead without ballast: err = %v, want ErrLoad", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the profile directory was made for nothing: %v", err)
	}
}
