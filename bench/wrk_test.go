package bench

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// serveOnly answers 200 to requests equal to want (method, URI, body,
// content type) and 404 to anything else, so a run without status errors
// proves wrk sent exactly that request.
func serveOnly(t *testing.T, want Workload) string {
	t.Helper()
	method := want.Method
	if method == "" {
		method = "GET"
	}
	return serveOnLoopback(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Method()) != method || string(ctx.RequestURI()) != want.Path || !bytes.Equal(ctx.PostBody(), want.Body) ||
			string(ctx.Request.Header.ContentType()) != want.ContentType {
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			return
		}
		ctx.SetBodyString(`{"ok":true}`)
	}})
}

func TestRunWrkSendsTheWorkload(t *testing.T) {
	tests := []struct {
		name   string
		wl     Workload
		warmup time.Duration
	}{
		{name: "plain GET, no script", wl: Workload{Name: "get", Path: "/v1/models"}},
		{name: "overhead's chat POST, with a warm-up", wl: Workload{Name: "chat", Method: "POST", Path: "/v1/chat/completions",
			Body: modelBody, ContentType: "application/json"}, warmup: time.Millisecond},
		{name: "body needing escapes", wl: Workload{Name: "odd", Method: "PUT", Path: "/x?y=1",
			Body: []byte("{\"q\":\"a\\\\b\\n\"}\n\t\x00 é"), ContentType: `text/plain; charset="utf-8"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serveOnly(t, tt.wl)
			measured := 0
			res, err := runWrk(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{tt.wl}, Connections: 2,
				Warmup: tt.warmup, Duration: time.Second, Timeout: time.Second, OnMeasure: func() { measured++ }})
			if err != nil {
				t.Fatal(err)
			}
			a := res.All
			if res.Mode != "closed" || a.Requests == 0 || a.OK != a.Requests || fmtErrors(a.Errors) != "0" || res.RPS <= 0 || a.Latency.P50 <= 0 {
				t.Errorf("result %+v", res)
			}
			if len(res.Workloads) != 1 || res.Workloads[0].Name != tt.wl.Name || res.Workloads[0].Requests != a.Requests {
				t.Errorf("workloads %+v", res.Workloads)
			}
			if measured != 1 {
				t.Errorf("OnMeasure called %d times", measured)
			}
		})
	}
}

func TestRunWrkCountsStatusErrors(t *testing.T) {
	addr := serveOnly(t, Workload{Path: "/only-this"})
	res, err := runWrk(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Name: "miss", Path: "/other"}},
		Connections: 1, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if a := res.All; a.Requests == 0 || a.OK != 0 || a.Errors["status"] != a.Requests {
		t.Errorf("404s: %+v", a)
	}
}

func TestRunWrkStopsWithTheContext(t *testing.T) {
	addr := serveOnly(t, Workload{Path: "/"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := runWrk(ctx, LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}}, Connections: 1, Duration: time.Minute})
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("runWrk took %v after its context ended", took)
	}
	// wrk prints its report on SIGINT; if the signal beat wrk's handler,
	// the context's error says why there is none.
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a report or the context's error", err)
	}
	t.Logf("after %v: %d requests in %v, err %v", time.Since(start), res.All.Requests, res.Elapsed, err)
	if err == nil && (res.All.Requests == 0 || res.Elapsed >= time.Minute) {
		t.Errorf("interrupted run: %+v", res)
	}
}

func TestRunWrkFailsClearly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	_, err = runWrk(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Name: "get", Path: "/"}}, Duration: time.Second})
	if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("err = %v, want ErrLoad with wrk's own message", err)
	}
}

func TestCheckWrkConfig(t *testing.T) {
	get := Workload{Name: "get", Path: "/"}
	tests := []struct {
		name string
		cfg  LoadConfig
		want string // in the error; "" accepts
	}{
		{name: "one GET", cfg: LoadConfig{Addr: "a:1", Workloads: []Workload{get}, Duration: time.Second}},
		{name: "one POST with a body", cfg: LoadConfig{Addr: "a:1", Duration: time.Second,
			Workloads: []Workload{{Name: "chat", Method: "POST", Path: "/v1/chat/completions", Body: modelBody, ContentType: "application/json"}}}},
		{name: "open loop", cfg: LoadConfig{Addr: "a:1", Workloads: []Workload{get}, Duration: time.Second, Rate: 100}, want: "closed loop only"},
		{name: "no address", cfg: LoadConfig{Workloads: []Workload{get}, Duration: time.Second}, want: "needs an address"},
		{name: "no duration", cfg: LoadConfig{Addr: "a:1", Workloads: []Workload{get}}, want: "positive duration"},
		{name: "two workloads", cfg: LoadConfig{Addr: "a:1", Workloads: []Workload{get, get}, Duration: time.Second}, want: "got 2 workloads"},
		{name: "no workload", cfg: LoadConfig{Addr: "a:1", Duration: time.Second}, want: "got 0 workloads"},
		{name: "keyed", cfg: LoadConfig{Addr: "a:1", Duration: time.Second, Workloads: []Workload{{Path: "/", KeyHeader: "X-Bench-Op"}}}, want: "cannot vary"},
		{name: "unique bodies", cfg: LoadConfig{Addr: "a:1", Duration: time.Second, Workloads: []Workload{{Path: "/", Body: modelBody, UniqueBody: true}}}, want: "cannot vary"},
		{name: "validated", cfg: LoadConfig{Addr: "a:1", Duration: time.Second,
			Workloads: []Workload{{Path: "/", Valid: func(_, _ []byte) bool { return true }}}}, want: "Valid"},
		{name: "relative path", cfg: LoadConfig{Addr: "a:1", Duration: time.Second, Workloads: []Workload{{Path: "v1"}}}, want: "must start with /"},
		{name: "space in path", cfg: LoadConfig{Addr: "a:1", Duration: time.Second, Workloads: []Workload{{Path: "/a b"}}}, want: "no spaces"},
		{name: "odd method", cfg: LoadConfig{Addr: "a:1", Duration: time.Second, Workloads: []Workload{{Method: "get\n", Path: "/"}}}, want: "upper-case"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkWrkConfig(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Errorf("rejected: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrLoad with %q", err, tt.want)
			}
		})
	}
}

func TestWrkScript(t *testing.T) {
	tests := []struct {
		name string
		wl   Workload
		want string
	}{
		{name: "GET needs none", wl: Workload{Path: "/"}, want: ""},
		{name: "explicit GET needs none", wl: Workload{Method: "GET", Path: "/"}, want: ""},
		{name: "POST with JSON", wl: Workload{Method: "POST", Body: []byte(`{"a":"b\c"}`), ContentType: "application/json"},
			want: "wrk.method = \"POST\"\nwrk.body = \"{\\034a\\034:\\034b\\092c\\034}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"},
		{name: "empty body is still a body", wl: Workload{Method: "POST", Body: []byte{}}, want: "wrk.method = \"POST\"\nwrk.body = \"\"\n"},
		{name: "bytes beyond ASCII", wl: Workload{Body: []byte("\n\x00é9")}, want: "wrk.body = \"\\010\\000\\195\\1699\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := wrkScript(tt.wl); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestWrkSeconds(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want string
	}{
		{name: "zero is a second", d: 0, want: "1s"},
		{name: "under a second rounds up", d: 100 * time.Millisecond, want: "1s"},
		{name: "whole seconds stay", d: 5 * time.Second, want: "5s"},
		{name: "a fraction over rounds up", d: 5*time.Second + time.Nanosecond, want: "6s"},
		{name: "minutes in seconds", d: 2 * time.Minute, want: "120s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := wrkSeconds(tt.d); got != tt.want {
				t.Errorf("wrkSeconds(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}

func TestResolveDriver(t *testing.T) {
	found := func(string) (string, error) { return "/usr/bin/wrk", nil }
	missing := func(name string) (string, error) { return "", errors.New(name + ": not found") }
	tests := []struct {
		name     string
		driver   string
		lookPath func(string) (string, error)
		want     string
		err      string // in the error; "" for none
	}{
		{name: "auto with wrk", driver: DriverAuto, lookPath: found, want: DriverWrk},
		{name: "empty is auto", driver: "", lookPath: found, want: DriverWrk},
		{name: "auto without wrk", driver: DriverAuto, lookPath: missing, want: DriverGo},
		{name: "go even with wrk", driver: DriverGo, lookPath: found, want: DriverGo},
		{name: "wrk when there", driver: DriverWrk, lookPath: found, want: DriverWrk},
		{name: "wrk when missing", driver: DriverWrk, lookPath: missing, err: "wrk is not on PATH"},
		{name: "unknown", driver: "ab", lookPath: found, err: `unknown driver "ab" (known: auto, go, wrk)`},
		{name: "case matters", driver: "WRK", lookPath: found, err: "unknown driver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveDriver(tt.driver, tt.lookPath)
			if tt.err != "" {
				if !errors.Is(err, ErrDriver) || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("err = %v, want ErrDriver with %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestOverheadRejectsDriversBeforeStarting(t *testing.T) {
	tests := []struct {
		name   string
		driver string
		path   string
	}{
		{name: "unknown driver", driver: "hey"},
		{name: "wrk not on PATH", driver: DriverWrk, path: t.TempDir()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.path != "" {
				t.Setenv("PATH", tt.path)
			}
			_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", Driver: tt.driver})
			if !errors.Is(err, ErrDriver) {
				t.Errorf("err = %v, want ErrDriver", err)
			}
		})
	}
	if _, err := Chaos(context.Background(), Options{Exe: "/nonexistent", Driver: "hey"}); !errors.Is(err, ErrDriver) {
		t.Errorf("chaos accepted an unknown driver: %v", err)
	}
}

// TestProcessAliveReportsADeadTarget guards the check after each overhead
// target: wrk keeps reconnecting to a dead target and would report its
// refused connects as a result.
func TestProcessAliveReportsADeadTarget(t *testing.T) {
	p, err := startProcess("short-lived", "/bin/sh", "-c", "echo last words; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	<-p.exited
	if err := p.alive(); !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "last words") {
		t.Errorf("err = %v", err)
	}
	live, err := startProcess("long-lived", "/bin/sh", "-c", "exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Stop()
	if err := live.alive(); err != nil {
		t.Errorf("running process: %v", err)
	}
}
