package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestStampEventRoundTrip(t *testing.T) {
	u := NewUpstream(UpstreamConfig{})
	now := time.Unix(1_764_000_000, 123_456_789)
	got := stampEvent(nil, u.event, now)
	data, ok := bytes.CutPrefix(got, []byte("data: "))
	if !ok || !bytes.HasSuffix(got, []byte("}\n\n")) {
		t.Fatalf("not an SSE data line: %q", got)
	}
	sent, ok := readStamp(data)
	if !ok || sent != now.UnixNano() {
		t.Fatalf("readStamp(%q) = %d, %v; want %d", data, sent, ok, now.UnixNano())
	}
	// The rest of the event is the upstream's, unchanged.
	if want := strings.Replace(string(u.event), `data: {`, `data: {"sent_ns":1764000000123456789,`, 1); string(got) != want {
		t.Errorf("stamped event\n got %q\nwant %q", got, want)
	}
	// An event of another shape passes as it is.
	if got := stampEvent(nil, []byte("event: ping\n\n"), now); string(got) != "event: ping\n\n" {
		t.Errorf("%q", got)
	}
}

func TestReadStampRefuses(t *testing.T) {
	for _, data := range []string{"", "{}", `{"id":"x","sent_ns":5,`, `{"sent_ns":,`, `{"sent_ns":12`, `{"sent_ns":-5,`, `{"sent_ns":0,`,
		`{"sent_ns":99999999999999999999,`, `{"sent_ns":1e9,`} {
		if n, ok := readStamp([]byte(data)); ok {
			t.Errorf("readStamp(%q) = %d, true", data, n)
		}
	}
}

func FuzzReadStamp(f *testing.F) {
	f.Add([]byte(`{"sent_ns":1764000000123456789,"id":"x"}`))
	f.Add([]byte(`{"sent_ns":`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, ok := readStamp(data)
		if ok && n <= 0 {
			t.Fatalf("readStamp(%q) = %d, true", data, n)
		}
		if ok {
			if again, ok2 := readStamp(stampEvent(nil, []byte("data: {}\n\n"), time.Unix(0, n))[len("data: "):]); !ok2 || again != n {
				t.Fatalf("round trip of %d: %d, %v", n, again, ok2)
			}
		}
	})
}

// streamLoad runs a short stream load against addr.
func streamLoad(t *testing.T, addr string, events int) StreamLoadResult {
	t.Helper()
	res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
		Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 100, Connections: 4,
		Duration: 200 * time.Millisecond, Timeout: 2 * time.Second, WantEvents: events,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRunStreamLoadMeasuresStampedEvents(t *testing.T) {
	const events = 5
	_, addr := serve(t, UpstreamConfig{StreamEvents: events, StreamInterval: time.Millisecond, StreamStamp: true})
	var measured bool
	res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
		Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 100, Connections: 4, Warmup: 50 * time.Millisecond,
		Duration: 200 * time.Millisecond, Timeout: 2 * time.Second, WantEvents: events, OnMeasure: func() { measured = true },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !measured {
		t.Error("OnMeasure was not called")
	}
	// 100 streams a second for 200 ms: 20 due in the window, the warm-up's
	// 5 not counted.
	if res.Streams != 20 || res.Complete != res.Streams || res.Events != res.Streams*events || len(res.Errors) != 0 {
		t.Fatalf("%+v", res)
	}
	// Each stream's last event was written (events-1) intervals after its
	// first: the whole stream cannot be shorter.
	if minWhole := float64(events-1) * 1; res.Stream.P50 < minWhole {
		t.Errorf("streams took %v ms at p50, less than the %v ms the upstream spaced their events over", res.Stream.P50, minWhole)
	}
	if res.EventDelay.P50 <= 0 || res.FirstEvent.P50 <= 0 || res.FirstEvent.P50 > res.Stream.P50 || res.EventDelay.P99 < res.EventDelay.P50 {
		t.Errorf("first event %+v, event delay %+v, stream %+v", res.FirstEvent, res.EventDelay, res.Stream)
	}
}

// A proxy that reads each answer whole before sending it on holds every
// event until the last is written: the event delay must show it. The
// bare fasthttp proxy does that (bareNotStreaming).
func TestRunStreamLoadSeesABufferingProxy(t *testing.T) {
	const events, interval = 4, 20 * time.Millisecond
	_, up := serve(t, UpstreamConfig{StreamEvents: events, StreamInterval: interval, StreamStamp: true})
	res := streamLoad(t, serveOnLoopback(t, NewBareProxy(up)), events)
	if res.Complete != res.Streams || res.Streams == 0 {
		t.Fatalf("%+v", res)
	}
	// The first event waited for the other three, written 20 ms apart:
	// at least 60 ms, so the median delay over the four is at least 20 ms.
	held := float64((events - 1) * interval / time.Millisecond)
	if res.EventDelay.Max < held || res.EventDelay.P50 < float64(interval/time.Millisecond) {
		t.Errorf("event delay %+v through a buffering proxy; the first event must wait at least %v ms", res.EventDelay, held)
	}
	if res.FirstEvent.P50 < held {
		t.Errorf("first event at %v ms through a buffering proxy, before the last was written (%v ms)", res.FirstEvent.P50, held)
	}
}

func TestRunStreamLoadClassifiesFailures(t *testing.T) {
	t.Run("cut", func(t *testing.T) {
		// Two events of four, then the connection closes without the
		// final chunk.
		event := stampEvent(nil, []byte(`data: {"id":"x"}`+"\n\n"), time.Now())
		addr := serveRaw(t, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s%s\r\n",
			2*len(event), event, event))
		if res := streamLoad(t, addr, 4); res.Complete != 0 || res.Errors["cut"] != res.Streams || res.Streams == 0 || res.Events != 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("closed before an answer", func(t *testing.T) {
		addr := serveRaw(t, "")
		if res := streamLoad(t, addr, 4); res.Complete != 0 || res.Errors["transport"] != res.Streams || res.Streams == 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("events", func(t *testing.T) {
		_, addr := serve(t, UpstreamConfig{StreamEvents: 3, StreamStamp: true})
		if res := streamLoad(t, addr, 4); res.Complete != 0 || res.Errors["events"] != res.Streams || res.Streams == 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("unstamped", func(t *testing.T) {
		_, addr := serve(t, UpstreamConfig{StreamEvents: 3})
		if res := streamLoad(t, addr, 3); res.Complete != 0 || res.Errors["unstamped"] != res.Streams || res.Streams == 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("status and content type", func(t *testing.T) {
		for _, c := range []struct {
			status int
			ct     string
			class  string
		}{{503, "application/json", "5xx"}, {429, "application/json", "429"}, {404, "text/plain", "4xx"}, {200, "application/json", "content_type"}} {
			addr := serveFunc(t, func(ctx *fasthttp.RequestCtx) {
				ctx.SetStatusCode(c.status)
				ctx.SetContentType(c.ct)
				ctx.SetBodyString(`{"error":"no"}`)
			})
			if res := streamLoad(t, addr, 3); res.Complete != 0 || res.Errors[c.class] != res.Streams || res.Streams == 0 {
				t.Errorf("%d %s: %+v", c.status, c.ct, res)
			}
		}
	})
	t.Run("degraded by ballast", func(t *testing.T) {
		event := string(stampEvent(nil, []byte(`data: {"id":"x"}`+"\n\n"), time.Now()))
		for header, class := range map[[2]string]string{
			{"X-Ballast-Fallback", "static"}:                                                "fallback",
			{"Cache-Status", "upstream; fwd=uri-miss, ballast; hit; detail=stale-if-error"}: "stale",
		} {
			addr := serveFunc(t, func(ctx *fasthttp.RequestCtx) {
				ctx.SetContentType("text/event-stream")
				ctx.Response.Header.Set(header[0], header[1])
				ctx.SetBodyString(event + event + event + "data: [DONE]\n\n")
			})
			if res := streamLoad(t, addr, 3); res.Complete != 0 || res.Errors[class] != res.Streams || res.Streams == 0 {
				t.Errorf("%s: %+v", header, res)
			}
		}
	})
	t.Run("timeout", func(t *testing.T) {
		_, addr := serve(t, UpstreamConfig{StreamEvents: 3, StreamInterval: time.Hour, StreamStamp: true})
		res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
			Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 50, Connections: 2,
			Duration: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, WantEvents: 3,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Complete != 0 || res.Errors["timeout"] != res.Streams || res.Streams == 0 {
			t.Errorf("%+v", res)
		}
	})
}

// serveRaw answers every connection's first request with answer, then
// closes it, until the test ends.
func serveRaw(t *testing.T, answer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 4096)
				if _, err := c.Read(buf); err != nil {
					return
				}
				_, _ = c.Write([]byte(answer))
			})
		}
	})
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// serveFunc runs handler on loopback until the test ends.
func serveFunc(t *testing.T, handler fasthttp.RequestHandler) string {
	t.Helper()
	return serveOnLoopback(t, &fasthttp.Server{Handler: handler, Logger: quietLogger{}, CloseOnShutdown: true})
}

func TestRunStreamLoadRefusesBadConfigs(t *testing.T) {
	for _, cfg := range []StreamLoadConfig{
		{Path: "/", Rate: 1, Duration: time.Second},
		{Addr: "127.0.0.1:1", Path: "/", Rate: 0, Duration: time.Second},
		{Addr: "127.0.0.1:1", Path: "/", Rate: 1},
	} {
		if _, err := RunStreamLoad(context.Background(), cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// TestStreamScenario runs the scenario with the real binary and tiny
// durations, and checks shapes and comparisons, never speed.
func TestStreamScenario(t *testing.T) {
	exe := buildBallast(t)
	var progress bytes.Buffer
	opts := Options{Exe: exe, Duration: 300 * time.Millisecond, Warmup: -1, Rate: 40, Connections: 8, Timeout: 2 * time.Second,
		Rounds: 2, StreamEvents: 5, StreamInterval: 2 * time.Millisecond, Progress: &progress}
	r, err := Stream(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{TargetDirect, TargetBallast}
	if NginxPath() != "" {
		names = append(names, TargetNginx)
	} else if r.Skipped[TargetNginx] == "" {
		t.Errorf("nginx not on PATH, and not said to be skipped: %v", r.Skipped)
	}
	if len(r.Targets) != len(names) || len(r.Rounds) != 2 || r.Events != 5 || r.Interval != "2ms" || r.Settings.Rounds != 2 {
		t.Fatalf("%+v", r)
	}
	for i, tg := range r.Targets {
		l := tg.Load
		// 40 streams a second for 300 ms, in each of two rounds.
		if tg.Name != names[i] || l.Streams != 24 || l.Complete != l.Streams || l.Events != 5*l.Streams || len(l.Errors) != 0 {
			t.Errorf("%s: %+v", tg.Name, l)
		}
		// CPU is read in 10 ms ticks: a short run may show none.
		if l.EventDelay.P50 <= 0 || l.FirstEvent.P50 <= 0 || tg.CPUPer1kEvents < 0 || tg.PeakRSS <= 0 {
			t.Errorf("%s: event delay %+v, first event %+v, cpu %v, rss %v", tg.Name, l.EventDelay, l.FirstEvent, tg.CPUPer1kEvents, tg.PeakRSS)
		}
		if tg.Name == TargetDirect {
			continue
		}
		direct := r.Targets[0].Load
		// A run this short may read no CPU tick for direct in either
		// round: the ratio is then 0, never a division by zero.
		wantRatio := 0.0
		if d := r.Targets[0].CPUPer1kEvents; d > 0 {
			wantRatio = tg.CPUPer1kEvents / d
		}
		if tg.AddedEventDelay.P50 != l.EventDelay.P50-direct.EventDelay.P50 || tg.CPURatio != wantRatio {
			t.Errorf("%s not compared with direct: %+v", tg.Name, tg)
		}
		for k, round := range r.Rounds {
			if a := round[i].AddedEventDelay.P99; a != round[i].Load.EventDelay.P99-round[0].Load.EventDelay.P99 {
				t.Errorf("round %d: %s's added p99 %v not against that round's direct", k+1, tg.Name, a)
			}
		}
	}
	if !strings.Contains(progress.String(), "round 2 of 2: ballast open loop") ||
		strings.Index(progress.String(), "round 2 of 2: ballast") > strings.Index(progress.String(), "round 2 of 2: direct") {
		t.Errorf("round 2 did not start with ballast:\n%s", progress.String())
	}

	var out bytes.Buffer
	rep := &Report{Stream: r}
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	md := string(rep.Markdown(""))
	for _, want := range []string{"event delay p99 ms", "added event delay p99", "CPU ms / 1k events", "round 2", "bare: the bare fasthttp proxy"} {
		if !strings.Contains(out.String(), want) || !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s\n%s", want, out.String(), md)
		}
	}
	if !strings.Contains(md, "### Streams") {
		t.Errorf("no Streams section:\n%s", md)
	}
}

func TestStreamRefusesWhatItDoesNotTake(t *testing.T) {
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{Exe: "/nonexistent", Targets: []string{TargetBare}}, "no streaming baseline"},
		{Options{Exe: "/nonexistent", Targets: []string{"haproxy"}}, "unknown stream target"},
		{Options{Exe: "/nonexistent", Config: "ballast.yaml"}, "Config"},
		{Options{Exe: "/nonexistent", CPUProfileDir: "p"}, "CPUProfileDir"},
	} {
		if _, err := Stream(context.Background(), c.opts); !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want ErrLoad saying %q", c.opts, err, c.want)
		}
	}
	for _, run := range []func(context.Context, Options) error{
		func(ctx context.Context, o Options) error { _, err := Overhead(ctx, o); return err },
		func(ctx context.Context, o Options) error { _, err := Chaos(ctx, o); return err },
		func(ctx context.Context, o Options) error { _, err := Policies(ctx, o); return err },
		func(ctx context.Context, o Options) error { _, err := State(ctx, o); return err },
		func(ctx context.Context, o Options) error { _, err := Soak(ctx, o); return err },
	} {
		if err := run(context.Background(), Options{Exe: "/nonexistent", StreamEvents: 3}); !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "StreamEvents") {
			t.Errorf("a scenario took StreamEvents: %v", err)
		}
	}
}
