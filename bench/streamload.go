package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// StreamLoadConfig configures one streaming load run against one address:
// an open loop of POSTs each answered with an SSE stream whose events the
// upstream stamped (UpstreamConfig.StreamStamp).
type StreamLoadConfig struct {
	// Addr is host:port of the target.
	Addr string
	// Path and Body are the POST's; Body is sent as application/json.
	Path string
	Body []byte
	// Rate is the open loop's streams per second: stream i is due at
	// start + i/Rate whatever happened before, and its times count from
	// then (no coordinated omission). It must be positive.
	Rate float64
	// Connections caps concurrent streams (and connections). Default 64. A
	// stream due while every connection is busy waits for one, its times
	// and its Timeout still counted from its intended time.
	Connections int
	// Warmup runs the same load first and discards it. Default 0.
	Warmup time.Duration
	// Duration is the measured window; it must be positive. Streams due
	// within it are measured to their end, even past it.
	Duration time.Duration
	// Timeout bounds each stream, from its intended time to its last
	// byte. Default 5s.
	Timeout time.Duration
	// WantEvents, when positive, is how many stamped events every stream
	// must carry before `data: [DONE]`; a stream with more or fewer fails
	// (class "events"): the target lost, repeated or made up events.
	WantEvents int
	// OnMeasure, when set, is called once when the measured window
	// starts, on its own goroutine; it has returned when RunStreamLoad
	// does.
	OnMeasure func()
}

// StreamLoadResult is the measured window of one streaming load run.
type StreamLoadResult struct {
	// Streams counts the streams due in the measured window; Complete
	// those that ended with `data: [DONE]` and every event stamped.
	Streams  int64 `json:"streams"`
	Complete int64 `json:"complete"`
	// Events counts the stamped events the complete measured streams
	// delivered.
	Events int64 `json:"events"`
	// WindowEvents counts every stamped event that arrived from the start
	// of the measured window to the end of its last stream, whatever its
	// stream: the warm-up streams' last events and those of measured
	// streams that failed, besides Events. It is what the target's CPU
	// over that time was spent on (StreamTarget.CPUPer1kEvents).
	WindowEvents int64 `json:"window_events"`
	// Errors counts failed streams by class: "fallback" and "stale"
	// (ballast's degraded answers, as for the load driver), "429", "4xx",
	// "5xx", "3xx" and "status_<code>" for any other (the answer's
	// status, after any interim 1xx; nothing streamed), "content_type" (a
	// 2xx that was not text/event-stream), "unstamped" (an event without
	// the upstream's stamp: the stream was not the upstream's), "cut" (the
	// body ended before `data: [DONE]`), "events" (the wrong number of
	// events; see StreamLoadConfig.WantEvents), "transport" and "timeout".
	Errors map[string]int64 `json:"errors"`
	// The percentiles are of the complete streams only. An event arrives
	// when an agent's SSE parser would dispatch it: at the blank line
	// that ends it (sseReader).
	// FirstEvent is the time from a stream's intended start to the
	// arrival of its first event: what an agent waits for its first token.
	FirstEvent Percentiles `json:"first_event"`
	// EventDelay is, for every event, the time from the upstream writing
	// it (its stamp) to its arrival at the client: how long a token is
	// held on its way. The client and the upstream share the machine's
	// clock.
	EventDelay Percentiles `json:"event_delay"`
	// Stream is the time from a stream's intended start to its end.
	Stream Percentiles `json:"stream"`
	// ScheduleLag is how late the open loop started its measured streams:
	// the driver's own resolution, which FirstEvent and Stream include.
	ScheduleLag Percentiles `json:"schedule_lag"`
}

// CompleteRate is Complete/Streams, 0 without streams.
func (r *StreamLoadResult) CompleteRate() float64 {
	if r.Streams == 0 {
		return 0
	}
	return float64(r.Complete) / float64(r.Streams)
}

// RunStreamLoad drives streams at cfg.Addr and returns the measured
// window. It returns early, with what it measured, when ctx ends: the
// streams in flight are dropped (and not counted), those still waiting
// for a connection are not sent. Every goroutine and connection it
// starts is gone when it returns.
func RunStreamLoad(ctx context.Context, cfg StreamLoadConfig) (StreamLoadResult, error) {
	if cfg.Addr == "" || cfg.Duration <= 0 || !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return StreamLoadResult{}, fmt.Errorf("%w: a stream load needs an address, a positive duration and a finite positive rate", ErrLoad)
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	d := &streamDriver{cfg: cfg, tally: newStreamTally()}
	d.request = streamRequest(cfg.Addr, cfg.Path, cfg.Body)
	start := time.Now()
	d.measureFrom = start.Add(cfg.Warmup)
	d.end = d.measureFrom.Add(cfg.Duration)

	jobs := make(chan job, 1<<14)
	var wg sync.WaitGroup
	for range cfg.Connections {
		wg.Go(func() {
			w := &streamWorker{d: d, ctx: ctx}
			defer w.close()
			for j := range jobs {
				if ctx.Err() == nil {
					w.do(j)
				}
			}
		})
	}
	d.schedule(ctx, start, jobs)
	close(jobs)
	wg.Wait()
	d.measuring.Wait()
	res := d.tally.result()
	res.WindowEvents = d.windowEvents.Load()
	return res, nil
}

// streamRequest is the bytes of the stream POST.
func streamRequest(addr, path string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: %d\r\n\r\n",
		path, addr, len(body))
	b.Write(body)
	return b.Bytes()
}

type streamDriver struct {
	cfg         StreamLoadConfig
	request     []byte
	tally       *streamTally
	measureFrom time.Time
	end         time.Time
	measureOnce sync.Once
	measuring   sync.WaitGroup
	// windowEvents counts the events that arrived from measureFrom on
	// (StreamLoadResult.WindowEvents).
	windowEvents atomic.Int64
}

// schedule sends stream i to jobs at start + i/Rate until the end or ctx,
// with the open loop's fine pacer.
func (d *streamDriver) schedule(ctx context.Context, start time.Time, jobs chan<- job) {
	p := newPacer()
	defer p.stop()
	perStream := float64(time.Second) / d.cfg.Rate
	for i := uint64(0); ; i++ {
		at := start.Add(time.Duration(float64(i) * perStream))
		if !at.Before(d.end) || !p.sleepUntil(ctx, at) {
			return
		}
		warm := at.Before(d.measureFrom)
		if !warm {
			d.measureOnce.Do(func() {
				if d.cfg.OnMeasure != nil {
					d.measuring.Go(d.cfg.OnMeasure)
				}
			})
			d.tally.lag(time.Since(at))
		}
		select {
		case jobs <- job{n: i, intended: at, warm: warm}:
		case <-ctx.Done():
			return
		}
	}
}

// streamWorker owns one connection, dialled when first needed and again
// after any stream that left it unusable.
type streamWorker struct {
	d *streamDriver
	// ctx ends the run: it drops the stream in flight.
	ctx  context.Context
	conn net.Conn
	br   *bufio.Reader
	// sse reads the events out of one answer's body.
	sse sseReader
	// delays are the current stream's event delays, recorded only once the
	// stream is known to be measured and whole.
	delays []time.Duration
}

func (w *streamWorker) close() {
	if w.conn != nil {
		_ = w.conn.Close()
		w.conn = nil
	}
}

// do runs stream j and records it when it was due in the measured window.
func (w *streamWorker) do(j job) {
	deadline := j.intended.Add(w.d.cfg.Timeout)
	s := w.stream(j.intended, deadline)
	if j.warm || (s.class != "" && w.ctx.Err() != nil) {
		return // a warm-up stream, or one the run's end dropped
	}
	w.d.tally.record(&s, w.delays)
}

// streamOutcome is one stream's times and fate; class "" is complete.
type streamOutcome struct {
	class      string
	firstEvent time.Duration // 0: none arrived
	whole      time.Duration
}

// stream sends the POST and reads its answer to the end, timing its
// first event from intended and each event from its stamp.
func (w *streamWorker) stream(intended, deadline time.Time) (out streamOutcome) {
	w.delays = w.delays[:0]
	if !time.Now().Before(deadline) {
		return streamOutcome{class: "timeout"}
	}
	var doneAt time.Time // when `data: [DONE]` came: the stream's end for an agent
	defer func() {
		if out.class != "" {
			w.close() // the connection is somewhere inside an answer
		}
		if doneAt.IsZero() {
			doneAt = time.Now()
		}
		out.whole = doneAt.Sub(intended)
	}()
	if w.conn == nil {
		dctx, cancel := context.WithDeadline(w.ctx, deadline)
		conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", w.d.cfg.Addr)
		cancel()
		if err != nil {
			return streamOutcome{class: errorClass(err)}
		}
		w.conn = conn
		if w.br == nil {
			w.br = bufio.NewReaderSize(conn, 16<<10)
		} else {
			w.br.Reset(conn)
		}
	}
	if err := w.conn.SetDeadline(deadline); err != nil {
		return streamOutcome{class: "transport"}
	}
	// The run's end drops the stream: every read and write on the
	// connection fails at once, and the connection is not reused.
	conn := w.conn
	dropped := context.AfterFunc(w.ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !dropped() {
			w.close()
		}
	}()
	if _, err := w.conn.Write(w.d.request); err != nil {
		return streamOutcome{class: errorClass(err)}
	}
	resp, err := readFinalResponse(w.br)
	if err != nil {
		return streamOutcome{class: errorClass(err)}
	}
	// resp.Body is not closed: its Close reads the rest of the answer,
	// which would hold a failed stream, and the streams queued behind
	// it, until the answer ended or the deadline passed. A failed
	// stream's connection is dropped instead (the deferred w.close),
	// with whatever of the answer is left; a complete stream has read
	// its body to the end.
	if class := degradedStreamClass(resp.Header); class != "" {
		return streamOutcome{class: class}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return streamOutcome{class: statusClass(resp.StatusCode)}
	}
	if ct := resp.Header.Get("Content-Type"); !isEventStream([]byte(ct)) {
		return streamOutcome{class: "content_type"}
	}
	w.sse.reset(resp.Body)
	done, ended := false, false
	var first time.Duration
	for {
		data, n, err := w.sse.next()
		now := time.Now() // the event is the agent's once its blank line is in
		if err == io.EOF {
			ended = true // the answer ended where its framing says
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			// The connection closed inside the answer (no last chunk,
			// or short of its Content-Length): cut below unless
			// `data: [DONE]` came, and never reused.
			break
		}
		if err != nil {
			return streamOutcome{class: errorClass(err), firstEvent: first}
		}
		if n == len(sseDone) && string(data) == sseDone {
			// An SDK stops here and closes the answer (openai-python's
			// Stream). The connection is kept only if the answer's end
			// follows within doneGrace; an upstream that holds its body
			// open past [DONE] costs its connection, not a timeout.
			done, doneAt = true, now
			grace := now.Add(doneGrace)
			if deadline.Before(grace) {
				grace = deadline
			}
			if err := w.conn.SetReadDeadline(grace); err != nil {
				break
			}
			ended = w.sse.discardRest()
			break
		}
		sent, ok := readStamp(data)
		if !ok {
			return streamOutcome{class: "unstamped", firstEvent: first}
		}
		if first == 0 {
			first = max(now.Sub(intended), time.Nanosecond)
		}
		w.delays = append(w.delays, now.Sub(time.Unix(0, sent)))
		if !now.Before(w.d.measureFrom) {
			w.d.windowEvents.Add(1)
		}
	}
	if !done {
		return streamOutcome{class: "cut", firstEvent: first}
	}
	if want := w.d.cfg.WantEvents; want > 0 && len(w.delays) != want {
		return streamOutcome{class: "events", firstEvent: first}
	}
	if resp.Close || !ended {
		w.close()
	}
	return streamOutcome{firstEvent: first}
}

// readFinalResponse reads the answer to the stream's POST, skipping the
// interim 1xx answers a server may send first (103 Early Hints, 100
// Continue), as net/http's client does: they carry no body and say
// nothing of the answer. 101 Switching Protocols is final.
func readFinalResponse(br *bufio.Reader) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, err
		}
	}
}

// degradedStreamClass is degradedClass for net/http's header: "fallback"
// for a static fallback, "stale" for ballast's stored answer served
// because the upstream failed, else "".
func degradedStreamClass(h http.Header) string {
	if h.Get(string(headerFallback)) != "" {
		return classFallback
	}
	for _, line := range h.Values(string(headerCacheStatus)) {
		if staleMember([]byte(line)) {
			return classStale
		}
	}
	return ""
}

// sseDone is the data of the event that ends a model's stream.
const sseDone = "[DONE]"

// doneGrace is how long the driver reads on after `data: [DONE]` for the
// answer's end (its last chunk), to keep the connection; past it, the
// connection is closed, as an SDK's is, and the stream still counts.
const doneGrace = 100 * time.Millisecond

// readStamp reads the upstream's `"sent_ns":N` from an event's data
// (stampEvent writes it as the first member).
func readStamp(data []byte) (int64, bool) {
	const key = `{"sent_ns":`
	rest, ok := bytes.CutPrefix(data, []byte(key))
	if !ok {
		return 0, false
	}
	end := bytes.IndexByte(rest, ',')
	if end <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return n, err == nil && n > 0
}

// statusClass is an error status's class, as the load driver counts it
// (classify): a status outside 300–599 (101, or one past 599) is
// "status_<code>".
func statusClass(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "429"
	case status >= 600 || status < 300:
		return "status_" + strconv.Itoa(status)
	case status >= 500:
		return "5xx"
	case status >= 400:
		return "4xx"
	default:
		return "3xx"
	}
}

// errorClass is "timeout" for a deadline passed, else "transport".
func errorClass(err error) string {
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "transport"
}

// isEventStream reports a text/event-stream Content-Type.
func isEventStream(ct []byte) bool {
	mt, _, _ := bytes.Cut(ct, []byte(";"))
	return bytes.EqualFold(bytes.TrimSpace(mt), []byte("text/event-stream"))
}

// streamTally is the measured streams' live statistics. Safe for
// concurrent use.
type streamTally struct {
	mu                                sync.Mutex
	first, delay, whole, scheduleLate *hdrhistogram.Histogram
	streams, complete, events         int64
	errors                            map[string]int64
}

func newStreamTally() *streamTally {
	h := func() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, 3) }
	return &streamTally{first: h(), delay: h(), whole: h(), scheduleLate: h(), errors: map[string]int64{}}
}

func recordUs(h *hdrhistogram.Histogram, d time.Duration) {
	_ = h.RecordValue(min(max(d.Microseconds(), histMin), histMax))
}

func (t *streamTally) lag(d time.Duration) {
	t.mu.Lock()
	recordUs(t.scheduleLate, d)
	t.mu.Unlock()
}

// record counts one measured stream. Its times count only when it
// completed: a stream cut half-way has the times of a call that failed.
func (t *streamTally) record(s *streamOutcome, delays []time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams++
	if s.class != "" {
		t.errors[s.class]++
		return
	}
	t.complete++
	if s.firstEvent > 0 {
		recordUs(t.first, s.firstEvent)
	}
	t.events += int64(len(delays))
	recordUs(t.whole, s.whole)
	for _, d := range delays {
		recordUs(t.delay, d)
	}
}

func (t *streamTally) result() StreamLoadResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	return StreamLoadResult{
		Streams: t.streams, Complete: t.complete, Events: t.events, Errors: t.errors,
		FirstEvent: percentiles(t.first), EventDelay: percentiles(t.delay), Stream: percentiles(t.whole),
		ScheduleLag: percentiles(t.scheduleLate),
	}
}
