package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
)

// serveConns runs a raw HTTP/1.1 server on loopback until the test ends:
// it reads each request of each connection and calls answer with the
// connection and the request's number on it (from 0); the connection
// closes when answer returns false. done is closed when the test ends,
// for an answer that holds its connection open.
func serveConns(t *testing.T, answer func(c net.Conn, n int, done <-chan struct{}) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !answer(c, n, done) {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		close(done)
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// sseEvents is n stamped events, each `data: {...}` and a blank line.
func sseEvents(n int) string {
	var s string
	for range n {
		s += string(stampEvent(nil, []byte(`data: {"id":"x"}`+"\n\n"), time.Now()))
	}
	return s
}

// chunked is body as one chunk and the last chunk.
func chunked(body string) string { return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body) }

// An interim 1xx answer (103 Early Hints, 100 Continue) comes before the
// real one and says nothing about it: net/http's client skips it, and an
// agent's does too. The driver took it for the answer and classed a
// whole stream "3xx".
func TestRunStreamLoadSkipsInterimAnswers(t *testing.T) {
	const events = 3
	addr := serveConns(t, func(c net.Conn, _ int, _ <-chan struct{}) bool {
		_, err := io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 100 Continue\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
			chunked(sseEvents(events)+"data: [DONE]\n\n"))
		return err == nil
	})
	if res := streamLoad(t, addr, events); res.Streams == 0 || res.Complete != res.Streams || res.Events != events*res.Streams {
		t.Errorf("%+v", res)
	}
}

// A stream that has failed is over for the agent: the driver must drop
// its connection then, not read the rest of an answer it has already
// classed (net/http's Body.Close reads to the end), which held the
// worker, and every stream queued behind it, until the answer ended or
// Timeout passed.
func TestRunStreamLoadDropsAFailedStreamAtOnce(t *testing.T) {
	for _, c := range []struct {
		name, head, body, class string
	}{
		{"error status", "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", `{"error":`, "5xx"},
		{"unstamped event", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n", "data: {\"id\":\"x\"}\n\n", "unstamped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			closed := make(chan struct{}, 1)
			addr := serveConns(t, func(conn net.Conn, _ int, done <-chan struct{}) bool {
				if _, err := fmt.Fprintf(conn, "%s%x\r\n%s\r\n", c.head, len(c.body), c.body); err != nil {
					return false
				}
				// The answer goes on; the client's close ends it.
				read := make(chan struct{})
				go func() { _, _ = io.Copy(io.Discard, conn); close(read) }()
				select {
				case <-read:
					closed <- struct{}{}
				case <-done:
					_ = conn.Close()
					<-read
				}
				return false
			})
			ran := make(chan StreamLoadResult, 1)
			go func() {
				// One stream, with a timeout it must not wait for.
				res, _ := RunStreamLoad(context.Background(), StreamLoadConfig{
					Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 10, Connections: 1,
					Duration: 50 * time.Millisecond, Timeout: time.Hour, WantEvents: 3,
				})
				ran <- res
			}()
			select {
			case res := <-ran:
				if res.Streams != 1 || res.Errors[c.class] != 1 {
					t.Errorf("%+v", res)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the driver still reads a %s answer it has classed", c.class)
			}
			select {
			case <-closed:
			case <-time.After(30 * time.Second):
				t.Error("the server did not see the connection close")
			}
		})
	}
}

// A body that ended without its last chunk left the connection closed
// by the server; when `data: [DONE]` had arrived the stream counted as
// complete, and the next stream on that worker was sent on the dead
// connection and failed as "transport".
func TestRunStreamLoadDropsAConnectionWhoseAnswerWasCut(t *testing.T) {
	const events = 3
	addr := serveConns(t, func(c net.Conn, _ int, _ <-chan struct{}) bool {
		body := sseEvents(events) + "data: [DONE]\n\n"
		_, _ = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body)
		return false // closed without the last chunk
	})
	res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
		Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 100, Connections: 1,
		Duration: 200 * time.Millisecond, Timeout: 2 * time.Second, WantEvents: events,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Streams == 0 || res.Complete != res.Streams || len(res.Errors) != 0 {
		t.Errorf("%+v", res)
	}
}

// The stream driver classes statuses as the load driver does (classify):
// a 101 is no redirect.
func TestStatusClass(t *testing.T) {
	for status, want := range map[int]string{101: "status_101", 301: "3xx", 304: "3xx", 404: "4xx", 429: "429", 500: "5xx", 503: "5xx", 600: "status_600"} {
		if got := statusClass(status); got != want {
			t.Errorf("statusClass(%d) = %q, want %q", status, got, want)
		}
	}
}

// stamped is one stamped event's data, `{"sent_ns":N,"id":"x"}`.
func stamped() string {
	return strings.TrimSuffix(strings.TrimPrefix(string(stampEvent(nil, []byte(`data: {"id":"x"}`+"\n\n"), time.Now())), "data: "), "\n\n")
}

// The driver reads an answer's events as an agent's SSE parser does:
// every legal way of writing the upstream's events is the same stream,
// and a line is never read from the middle of another.
func TestRunStreamLoadReadsSSEAsAnAgentDoes(t *testing.T) {
	const events = 3
	repeat := func(event func() string) string {
		var b strings.Builder
		for range events {
			b.WriteString(event())
		}
		return b.String()
	}
	long := func() string { // a data line longer than any line buffer
		return `data: {"sent_ns":` + strings.TrimPrefix(stamped(), `{"sent_ns":`)[:19] + `,"pad":"` + strings.Repeat("x", 5000) + `"}` + "\n\n"
	}
	cases := []struct {
		name      string
		framing   string // chunked (default), bytes (one-byte chunks, each written alone), length, close
		body      string
		complete  bool
		wantClass string
	}{
		{name: "LF", body: repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE]\n\n", complete: true},
		{name: "no space after data:", body: repeat(func() string { return "data:" + stamped() + "\n\n" }) + "data:[DONE]\n\n", complete: true},
		{name: "CRLF", body: repeat(func() string { return "data: " + stamped() + "\r\n\r\n" }) + "data: [DONE]\r\n\r\n", complete: true},
		{name: "CR", body: repeat(func() string { return "data: " + stamped() + "\r\r" }) + "data: [DONE]\r\r", complete: true},
		{name: "byte-order mark", body: "\uFEFF" + repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE]\n\n", complete: true},
		{name: "comments and other fields", body: ": ping\n\nretry: 1000\n\n" + repeat(func() string {
			return "event: chunk\nid: 7\n: keep-alive\ndata: " + stamped() + "\n\n"
		}) + "event: done\ndata: [DONE]\n\n", complete: true},
		{name: "data over two lines is one event", body: repeat(func() string { return "data: " + stamped() + "\ndata: more\n\n" }) + "data: [DONE]\n\n", complete: true},
		{name: "split into one-byte reads", framing: "bytes", body: repeat(func() string { return "data: " + stamped() + "\r\n\r\n" }) + "data: [DONE]\r\n\r\n", complete: true},
		{name: "Content-Length", framing: "length", body: repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE]\n\n", complete: true},
		{name: "read to close", framing: "close", body: repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE]\n\n", complete: true},
		{name: "lines longer than 4 KiB", body: repeat(long) + "data: [DONE]\n\n", complete: true},
		// What follows "data: " 4 KiB into a line is inside that line.
		{name: "data: inside a long line", body: repeat(func() string {
			return "data: " + stamped()[:len(stamped())-1] + `,"text":"` + strings.Repeat("x", 4096-len("data: ")-len(stamped())-len(`,"text":"`)+1) + `data: hello"}` + "\n\n"
		}) + "data: [DONE]\n\n", complete: true},
		{name: "[DONE] inside a long line", body: "data: " + stamped()[:len(stamped())-1] + `,"text":"` +
			strings.Repeat("x", 4096-len("data: ")-len(stamped())-len(`,"text":"`)+1) + `data: [DONE]"}` + "\n\n", wantClass: "cut"},
		// An event is the agent's at its blank line: one the body ends
		// before is never dispatched.
		{name: "[DONE] without its blank line", body: repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE]\n", wantClass: "cut"},
		{name: "[DONE] and more", body: repeat(func() string { return "data: " + stamped() + "\n\n" }) + "data: [DONE] now\n\n", wantClass: "unstamped"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := serveConns(t, func(conn net.Conn, _ int, _ <-chan struct{}) bool {
				head := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
				var err error
				switch c.framing {
				case "length":
					_, err = fmt.Fprintf(conn, "%sContent-Length: %d\r\n\r\n%s", head, len(c.body), c.body)
				case "close":
					_, err = fmt.Fprintf(conn, "%s\r\n%s", head, c.body)
					return false
				case "bytes":
					_, err = io.WriteString(conn, head+"Transfer-Encoding: chunked\r\n\r\n")
					for i := 0; err == nil && i < len(c.body); i++ {
						_, err = fmt.Fprintf(conn, "1\r\n%c\r\n", c.body[i])
					}
					if err == nil {
						_, err = io.WriteString(conn, "0\r\n\r\n")
					}
				default:
					_, err = io.WriteString(conn, head+"Transfer-Encoding: chunked\r\n\r\n"+chunked(c.body))
				}
				return err == nil
			})
			res := streamLoad(t, addr, events)
			if res.Streams == 0 {
				t.Fatalf("%+v", res)
			}
			if c.complete && (res.Complete != res.Streams || res.Events != events*res.Streams) {
				t.Errorf("want every stream complete with %d events: %+v", events, res)
			}
			if !c.complete && res.Errors[c.wantClass] != res.Streams {
				t.Errorf("want every stream %q: %+v", c.wantClass, res)
			}
		})
	}
}

// The agent has an event once its blank line is in, not its data line:
// a target that holds the blank line back holds the event.
func TestRunStreamLoadTimesAnEventAtItsBlankLine(t *testing.T) {
	const events, held = 2, 30 * time.Millisecond
	addr := serveConns(t, func(conn net.Conn, _ int, done <-chan struct{}) bool {
		if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
			return false
		}
		for range events {
			line := "data: " + stamped() + "\n"
			if _, err := fmt.Fprintf(conn, "%x\r\n%s\r\n", len(line), line); err != nil {
				return false
			}
			select { // the fixture's own pace: a target holding the blank line
			case <-time.After(held):
			case <-done:
				return false
			}
			if _, err := io.WriteString(conn, "1\r\n\n\r\n"); err != nil {
				return false
			}
		}
		_, err := io.WriteString(conn, chunked("data: [DONE]\n\n"))
		return err == nil
	})
	res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
		Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 50, Connections: 4,
		Duration: 100 * time.Millisecond, Timeout: 2 * time.Second, WantEvents: events,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Streams == 0 || res.Complete != res.Streams {
		t.Fatalf("%+v", res)
	}
	if minMs := float64(held / time.Millisecond); res.EventDelay.P50 < minMs || res.FirstEvent.P50 < minMs {
		t.Errorf("event delay %+v, first event %+v: each event was held %v after its data line", res.EventDelay, res.FirstEvent, held)
	}
}

// A target's process runs every round, so its VmHWM at the end of a
// round is the peak of all the rounds so far: over rounds, the peak is
// the highest, as the other scenarios report it, not the median.
func TestMedianStreamTargetKeepsThePeakRSS(t *testing.T) {
	runs := []StreamTarget{{Name: TargetBallast, PeakRSS: 10 << 20}, {Name: TargetBallast, PeakRSS: 30 << 20}, {Name: TargetBallast, PeakRSS: 20 << 20}}
	if got := medianStreamTarget(runs).PeakRSS; got != 30<<20 {
		t.Errorf("peak RSS over rounds %d MiB, want 30", got>>20)
	}
}

// A stream shape the driver cannot measure is refused before anything
// starts: streams no shorter than the timeout all time out, and more
// streams open at once than connections queue in the driver.
func TestStreamRefusesShapesItCannotMeasure(t *testing.T) {
	for _, c := range []struct {
		name string
		opts Options
		want []string
	}{
		{"streams as long as the timeout", Options{StreamEvents: 20, StreamInterval: 250 * time.Millisecond}, []string{"20 × 250ms = 5s", "time out"}},
		{"streams longer than the timeout", Options{StreamEvents: 5, StreamInterval: time.Second, Timeout: 2 * time.Second, Connections: 1000}, []string{"time out"}},
		{"more streams open than connections", Options{Rate: 1000}, []string{"1000 × 20 × 10ms = 200 streams open", "64 connections"}},
		{"both", Options{Rate: 50, StreamEvents: 100, StreamInterval: 100 * time.Millisecond, Connections: 8}, []string{"time out", "500 streams open"}},
		{"overflow", Options{StreamEvents: 100_000, StreamInterval: 1 << 60}, []string{"time out"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Exe = "/nonexistent"
			_, err := Stream(context.Background(), c.opts)
			if !errors.Is(err, ErrLoad) {
				t.Fatalf("%v, want ErrLoad", err)
			}
			for _, want := range c.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%v, want it to say %q", err, want)
				}
			}
		})
	}
	// The defaults, and the shapes the tests run, pass.
	for _, o := range []Options{{}, {Rate: 40, StreamEvents: 5, StreamInterval: 2 * time.Millisecond, Timeout: 2 * time.Second, Connections: 8}} {
		if err := CheckStream(o); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// RunStreamLoad returns early when ctx ends: the streams in flight are
// dropped, not read to their end or their Timeout, and the streams
// queued for a connection are not sent.
func TestRunStreamLoadStopsWhenCtxEnds(t *testing.T) {
	var mu sync.Mutex
	requests := 0
	started := make(chan struct{}, 1)
	addr := serveConns(t, func(c net.Conn, _ int, done <-chan struct{}) bool {
		mu.Lock()
		requests++
		mu.Unlock()
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
			fmt.Sprintf("%x\r\n%s\r\n", len(sseEvents(1)), sseEvents(1))); err != nil {
			return false
		}
		select {
		case started <- struct{}{}:
		default:
		}
		// A stream that never ends; the client's close ends it.
		read := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, c); close(read) }()
		select {
		case <-read:
		case <-done:
			_ = c.Close()
			<-read
		}
		return false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan StreamLoadResult, 1)
	go func() {
		res, _ := RunStreamLoad(ctx, StreamLoadConfig{
			Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 100, Connections: 2,
			Duration: time.Second, Timeout: time.Hour, WantEvents: 3,
		})
		ran <- res
	}()
	<-started
	cancel()
	select {
	case res := <-ran:
		if res.Complete != 0 {
			t.Errorf("%+v", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunStreamLoad still runs after its ctx ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if requests > 2 {
		t.Errorf("%d streams sent on 2 connections, after ctx ended", requests)
	}
}

// The CPU figures cover the measured window from its start to the end of
// its last stream, and the warm-up's streams still running at its start
// spend CPU in it too: the events they deliver then, and those of
// measured streams that failed, are counted for the CPU (WindowEvents),
// or the CPU per event comes out too high.
func TestRunStreamLoadCountsTheCPUWindowsEvents(t *testing.T) {
	const events = 5
	_, addr := serve(t, UpstreamConfig{StreamEvents: events, StreamInterval: 20 * time.Millisecond, StreamStamp: true})
	run := func(warmup time.Duration) StreamLoadResult {
		res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
			Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 100, Connections: 32, Warmup: warmup,
			Duration: 200 * time.Millisecond, Timeout: 2 * time.Second, WantEvents: events,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Streams == 0 || res.Complete != res.Streams {
			t.Fatalf("%+v", res)
		}
		return res
	}
	// Five warm-up streams, 0 to 40 ms, each writing its events 20 ms
	// apart for 80 ms: each delivers some after the window starts at 50.
	if res := run(50 * time.Millisecond); res.WindowEvents < res.Events+5 {
		t.Errorf("%d events in the CPU window, %d of them the measured streams'", res.WindowEvents, res.Events)
	}
	if res := run(0); res.WindowEvents != res.Events {
		t.Errorf("without a warm-up, %d events in the CPU window, %d delivered", res.WindowEvents, res.Events)
	}
}

// Neither proxy may end a stream the driver still waits for: ballast's
// route timeouts (idle 30s and total 120s by default) and nginx's
// proxy_read_timeout (60s) are raised to the driver's timeout when it is
// longer. At --stream-interval 31s, ballast cut every stream at 30s of
// silence and the report showed it failing them all.
func TestStreamProxiesOutlastTheDriversTimeout(t *testing.T) {
	for _, timeout := range []time.Duration{5 * time.Second, 45 * time.Second, 10 * time.Minute, 90*time.Minute + 500*time.Millisecond} {
		c := BallastConfig{Listen: "127.0.0.1:18080", Admin: "127.0.0.1:19901", Upstream: "127.0.0.1:19000", Stream: true, StreamTimeout: timeout}
		y, err := c.check()
		if err != nil {
			t.Fatalf("%v: %v", timeout, err)
		}
		cfg, err := config.Parse(y, config.Source{File: "bench", Environ: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		tm := cfg.Routes[0].Timeouts
		if time.Duration(tm.Idle) < timeout || time.Duration(tm.Total) < timeout {
			t.Errorf("driver timeout %v: ballast's idle %v, total %v\n%s", timeout, time.Duration(tm.Idle), time.Duration(tm.Total), y)
		}
		if timeout <= 30*time.Second && strings.Contains(string(y), "timeouts:") {
			t.Errorf("driver timeout %v: ballast's defaults are long enough, yet\n%s", timeout, y)
		}
		nginx := nginxConfig(t.TempDir(), "127.0.0.1:1", "127.0.0.1:2", 1, 64, timeout)
		read := 60 * time.Second
		if _, rest, ok := strings.Cut(nginx, "proxy_read_timeout "); ok {
			secs, _, _ := strings.Cut(rest, "s;")
			n, err := strconv.Atoi(secs)
			if err != nil {
				t.Fatalf("%q: %v", secs, err)
			}
			read = time.Duration(n) * time.Second
		}
		if read < timeout || !strings.Contains(nginx, "proxy_buffering off;") {
			t.Errorf("driver timeout %v: nginx reads for %v\n%s", timeout, read, nginx)
		}
	}
	if strings.Contains(nginxConfig("d", "l", "u", 1, 64, 0), "proxy_buffering") {
		t.Error("nginx does not buffer outside the stream scenario")
	}
}

// A target without a complete stream has no times (they are of complete
// streams only, and read 0): nothing may be subtracted from them, or
// they from another's, and a report shows "–" for them, not a target
// that "added" minus direct's first-event time.
func TestStreamFiguresNeedCompleteStreams(t *testing.T) {
	timed := func(name string, p50 float64) StreamTarget {
		p := Percentiles{P50: p50, P90: p50, P99: p50, P999: p50, Max: p50, Mean: p50}
		return StreamTarget{Name: name, CPUPer1kEvents: 50, Load: StreamLoadResult{Streams: 10, Complete: 10, Events: 200, WindowEvents: 200,
			FirstEvent: p, EventDelay: p, Stream: p, Errors: map[string]int64{}}}
	}
	failed := func(name string) StreamTarget {
		return StreamTarget{Name: name, CPUPer1kEvents: 40, Load: StreamLoadResult{Streams: 10, WindowEvents: 25, Errors: map[string]int64{"cut": 10}}}
	}
	for _, c := range []struct {
		name, failed string
		targets      []StreamTarget
	}{
		{"a target without", TargetBallast, []StreamTarget{timed(TargetDirect, 2.5), failed(TargetBallast)}},
		{"direct without", TargetDirect, []StreamTarget{failed(TargetDirect), timed(TargetBallast, 2.5)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &StreamResult{Settings: Settings{Rate: 100, Duration: "1s", Warmup: "0s", Connections: 64, Procs: 1}, Events: 20, Interval: "10ms",
				Rounds: [][]StreamTarget{c.targets}}
			r.summarise()
			if b := r.Targets[1]; b.AddedFirstEvent != (Percentiles{}) || b.AddedEventDelay != (Percentiles{}) {
				t.Errorf("added to a target without complete streams: %+v %+v", b.AddedFirstEvent, b.AddedEventDelay)
			}
			var out bytes.Buffer
			if err := (&Report{Stream: r}).WriteText(&out); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.String(), "+2.500") || strings.Contains(out.String(), "-2.500") {
				t.Errorf("a figure added to or from a target without times:\n%s", out.String())
			}
			// The latency table's row of the target without times.
			var rows [][]string
			for line := range strings.Lines(out.String()) {
				if f := strings.Fields(line); len(f) > 0 && f[0] == c.failed {
					rows = append(rows, f)
				}
			}
			if len(rows) != 2 {
				t.Fatalf("%d rows for %s:\n%s", len(rows), c.failed, out.String())
			}
			for _, cell := range rows[1][1:] {
				if cell != "–" {
					t.Errorf("%s has no times, yet its row reads %v", c.failed, rows[1])
					break
				}
			}
		})
	}
}

// The medians over rounds are of the rounds that measured the figure: a
// round without a complete stream has no times, and one without events
// no CPU per event, and their zeros must not pull the medians down.
func TestMedianStreamTargetSkipsRoundsWithoutFigures(t *testing.T) {
	p := func(v float64) Percentiles { return Percentiles{P50: v, P90: v, P99: v, P999: v, Max: v, Mean: v} }
	runs := []StreamTarget{
		{Name: TargetBallast, CPUPer1kEvents: 40, Load: StreamLoadResult{Streams: 10, Complete: 10, WindowEvents: 200, FirstEvent: p(1), EventDelay: p(0.2), Stream: p(30)}},
		{Name: TargetBallast, Load: StreamLoadResult{Streams: 10, Errors: map[string]int64{"5xx": 10}}},
	}
	m := medianStreamTarget(runs)
	if m.Load.FirstEvent != p(1) || m.Load.EventDelay != p(0.2) || m.Load.Stream != p(30) || m.CPUPer1kEvents != 40 {
		t.Errorf("first event %+v, event delay %+v, stream %+v, CPU %v: a round without figures counted", m.Load.FirstEvent, m.Load.EventDelay, m.Load.Stream, m.CPUPer1kEvents)
	}
}

// Shutdown ends the upstream's streams before it returns, the cut ones
// too: those run on hijacked connections, which fasthttp's Shutdown
// does not wait for, and one paused between events was still running
// after Shutdown had returned, about one time in twenty.
func TestUpstreamShutdownEndsCutStreams(t *testing.T) {
	for i := range 200 {
		u := NewUpstream(UpstreamConfig{Profile: Profile{Name: "cut", CutStream: 100}, StreamEvents: 4, StreamInterval: time.Hour, StreamStamp: true})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() { _ = u.Serve(ln); close(served) }()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(streamRequest(ln.Addr().String(), "/v1/stream", nil)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		// The first event is in: the stream now waits an hour for its next.
		if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		_ = u.Shutdown()
		stacks := make([]byte, 1<<20)
		stacks = stacks[:runtime.Stack(stacks, true)]
		_ = c.Close()
		<-served
		if bytes.Contains(stacks, []byte("(*Upstream).pause")) {
			t.Fatalf("try %d: a cut stream still waits for its next event after Shutdown returned", i)
		}
	}
}

// An agent's SDK stops reading at `data: [DONE]` and closes the answer
// (openai-python's Stream). A target that sends [DONE] but holds its body
// open counted as "timeout", though its agent got the whole stream: the
// driver read on for the last chunk until the stream's deadline. It now
// counts as complete, its time ends at [DONE], and its connection, whose
// answer never ended, is closed rather than reused.
func TestRunStreamLoadStopsAtDone(t *testing.T) {
	const events = 3
	opened := make(chan struct{}, 64)
	addr := serveConns(t, func(c net.Conn, _ int, done <-chan struct{}) bool {
		opened <- struct{}{}
		body := sseEvents(events) + "data: [DONE]\n\n"
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body); err != nil {
			return false
		}
		read := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, c); close(read) }()
		select { // held open, without the last chunk
		case <-read:
		case <-done:
			_ = c.Close()
			<-read
		}
		return false
	})
	res, err := RunStreamLoad(context.Background(), StreamLoadConfig{
		Addr: addr, Path: OverheadPath, Body: streamBody, Rate: 20, Connections: 8,
		Duration: 300 * time.Millisecond, Timeout: time.Minute, WantEvents: events,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Streams == 0 || res.Complete != res.Streams || len(res.Errors) != 0 {
		t.Fatalf("%+v; want every stream complete at its [DONE]", res)
	}
	if res.Stream.P99 > doneGrace.Seconds()*1000 {
		t.Errorf("stream p99 %.1f ms: a stream's time must end at its [DONE], not after the grace", res.Stream.P99)
	}
	if n := int64(len(opened)); n < res.Streams {
		t.Errorf("%d connections for %d streams: a connection whose answer never ended was reused", n, res.Streams)
	}
}
