package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// ErrLoad reports a load run that could not be set up.
var ErrLoad = errors.New("bench: load")

// Workload is one kind of request a load run sends. Requests take
// workloads in turn: request i uses Workloads[i % len(Workloads)].
type Workload struct {
	// Name labels the workload's results and its operation keys.
	Name string
	// Method defaults to GET.
	Method string
	// Path is the request path, e.g. /v1/chat/completions.
	Path string
	// Body and ContentType, when set, are sent with every request.
	Body        []byte
	ContentType string
	// KeyHeader, when set, names a header that carries a per-request
	// operation key: "<Name>-<n>" while measuring and "warm-<Name>-<n>"
	// during warm-up, n the request's ordinal in the run.
	KeyHeader string
	// UniqueBody, when true, makes every request's body different: Body
	// (a JSON object) with `"op":"<key>",` inserted after its opening
	// brace, key as for KeyHeader. Caches and auto-idempotency then see a
	// fresh request each time.
	UniqueBody bool
	// Valid decides agent-visible success of a 2xx answer. Nil accepts
	// every 2xx.
	Valid func(contentType, body []byte) bool
}

// LoadConfig configures one load run against one address.
type LoadConfig struct {
	// Addr is host:port of the target.
	Addr string
	// Workloads are the requests to send; at least one.
	Workloads []Workload
	// Rate, when positive, runs open-loop: request i is due at
	// start + i/Rate whatever happened before, and its latency counts from
	// that intended time, so a stalled target cannot hide its stall
	// (no coordinated omission). Zero runs closed-loop: Connections
	// workers each send their next request when the previous one ends.
	Rate float64
	// Connections caps concurrent requests (and connections). Default 64.
	// In the open loop a request due while every connection is busy waits
	// for one, its latency and its Timeout still counted from its intended
	// time: one still waiting when its Timeout passes is not sent and
	// counts as a timeout.
	Connections int
	// Warmup runs the same load first and discards it. Default 0.
	Warmup time.Duration
	// Duration is the measured window; it must be positive.
	Duration time.Duration
	// Timeout bounds each request, counted from its intended send time in
	// the open loop (an agent whose call has waited that long has failed,
	// sent or not). Default 5s.
	Timeout time.Duration
	// OnMeasure, when set, is called once when the warm-up ends and the
	// measured window starts (to snapshot the target's CPU, for example).
	// It runs on its own goroutine, so a slow snapshot does not hold up
	// the schedule (and get charged to the requests due meanwhile), and
	// it has returned by the time RunLoad does.
	OnMeasure func()
}

// Percentiles are latencies in milliseconds.
type Percentiles struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p99_9_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// WorkloadResult is the measured window of one workload.
type WorkloadResult struct {
	Name string `json:"name"`
	// Requests counts requests sent in the measured window; OK those that
	// succeeded as the agent sees it (2xx and Valid).
	Requests int64 `json:"requests"`
	OK       int64 `json:"ok"`
	// Errors counts failures by class: "3xx", "429" (rate limited: the
	// upstream or the proxy asked the agent to wait), "4xx" (every other
	// client error), "5xx", "invalid" (2xx the workload's Valid refused),
	// "fallback" (ballast's static_fallback answered, whatever its
	// status), "stale" (ballast served a stored answer because the
	// upstream failed), "transport" (connection errors) and "timeout".
	// Reports written before the "429" class existed count 429s under
	// "4xx"; before "fallback" and "stale", those answers counted by their
	// status, a 2xx as OK.
	Errors  map[string]int64 `json:"errors"`
	Latency Percentiles      `json:"latency"`
}

// SuccessRate is OK/Requests, 0 without requests.
func (w *WorkloadResult) SuccessRate() float64 {
	if w.Requests == 0 {
		return 0
	}
	return float64(w.OK) / float64(w.Requests)
}

// LoadResult is the outcome of one load run.
type LoadResult struct {
	// Mode is "open" or "closed".
	Mode string `json:"mode"`
	// TargetRate is LoadConfig.Rate (open loop only).
	TargetRate float64 `json:"target_rate,omitempty"`
	// Elapsed is the measured window as it happened: from its start to the
	// end of its last request. In JSON: elapsed_s, in seconds.
	Elapsed time.Duration `json:"-"`
	// RPS is the requests that ended (answered or failed) within the
	// measured window, per second of that window: the rate the target
	// sustained. A slow tail past the window (one request hanging until
	// its timeout) does not dilute it.
	RPS float64 `json:"rps"`
	// ScheduleLag is how late the open loop issued its measured requests
	// (open loop only): the driver's own resolution, which every latency
	// includes, since latencies count from the intended send times.
	ScheduleLag *Percentiles `json:"schedule_lag,omitempty"`
	// All merges the workloads.
	All       WorkloadResult   `json:"all"`
	Workloads []WorkloadResult `json:"workloads"`
}

// MarshalJSON writes the result with Elapsed in seconds, as elapsed_s
// (a bare time.Duration would be nanoseconds without a unit).
func (r LoadResult) MarshalJSON() ([]byte, error) {
	type fields LoadResult // without these methods
	return json.Marshal(struct {
		fields
		ElapsedS float64 `json:"elapsed_s"`
	}{fields(r), r.Elapsed.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *LoadResult) UnmarshalJSON(b []byte) error {
	type fields LoadResult
	var v struct {
		fields
		ElapsedS float64 `json:"elapsed_s"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = LoadResult(v.fields)
	r.Elapsed = fromSeconds(v.ElapsedS)
	return nil
}

// fromSeconds is a duration given in seconds in a report, to the
// nanosecond.
func fromSeconds(s float64) time.Duration {
	return time.Duration(math.Round(s * float64(time.Second)))
}

// job is one request to send.
type job struct {
	n        uint64
	intended time.Time
	warm     bool
}

// tally is one workload's live statistics. Safe for concurrent use.
type tally struct {
	mu     sync.Mutex
	hist   *hdrhistogram.Histogram
	reqs   int64
	ok     int64
	errors map[string]int64
}

const (
	histMin = 1                     // µs
	histMax = 10 * 60 * 1000 * 1000 // µs: ten minutes
)

func newTally() *tally {
	return &tally{hist: hdrhistogram.New(histMin, histMax, 3), errors: map[string]int64{}}
}

func (t *tally) record(lat time.Duration, class string) {
	us := min(max(lat.Microseconds(), histMin), histMax)
	t.mu.Lock()
	_ = t.hist.RecordValue(us)
	t.reqs++
	if class == "" {
		t.ok++
	} else {
		t.errors[class]++
	}
	t.mu.Unlock()
}

func (t *tally) result(name string) WorkloadResult {
	return WorkloadResult{Name: name, Requests: t.reqs, OK: t.ok, Errors: t.errors, Latency: percentiles(t.hist)}
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Percentiles{
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000,
	}
}

// RunLoad drives load at cfg.Addr and returns the measured window. It
// returns early, with what it measured, when ctx ends. Every goroutine and
// connection it starts is gone when it returns.
func RunLoad(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if len(cfg.Workloads) == 0 || cfg.Duration <= 0 || cfg.Addr == "" {
		return LoadResult{}, fmt.Errorf("%w: need an address, a workload and a positive duration", ErrLoad)
	}
	if !(cfg.Rate >= 0) || math.IsInf(cfg.Rate, 0) { // NaN would run closed-loop, +Inf schedule forever
		return LoadResult{}, fmt.Errorf("%w: rate %v is not a finite number of requests per second", ErrLoad, cfg.Rate)
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	d := &driver{ctx: ctx, cfg: cfg}
	d.client = newClient(cfg.Addr, cfg.Connections, cfg.Timeout, &d.conns)
	defer d.client.CloseIdleConnections()
	// The run's end ends the requests in flight too: their connections
	// close, and what they return is not counted (worker.do).
	defer context.AfterFunc(ctx, d.conns.closeAll)()
	for _, wl := range cfg.Workloads {
		d.tallies = append(d.tallies, newTally())
		d.uris = append(d.uris, "http://"+cfg.Addr+wl.Path)
	}
	start := time.Now()
	d.measureFrom = start.Add(cfg.Warmup)
	d.end = d.measureFrom.Add(cfg.Duration)
	res := LoadResult{Mode: "closed"}
	if cfg.Rate > 0 {
		res.Mode, res.TargetRate = "open", cfg.Rate
		d.lag = newTally()
		d.openLoop(ctx, start)
		lag := percentiles(d.lag.hist)
		res.ScheduleLag = &lag
	} else {
		d.closedLoop(ctx)
	}
	d.measuring.Wait()
	windowEnd := d.end
	if now := time.Now(); ctx.Err() != nil && now.Before(windowEnd) {
		windowEnd = now
	}
	if window := windowEnd.Sub(d.measureFrom); window > 0 {
		res.RPS = float64(d.ended.Load()) / window.Seconds()
	}
	res.Elapsed = time.Duration(d.lastDone.Load()) - time.Duration(d.measureFrom.UnixNano())
	if res.Elapsed <= 0 {
		res.Elapsed = cfg.Duration
	}
	all := newTally()
	for i, t := range d.tallies {
		w := t.result(cfg.Workloads[i].Name)
		res.Workloads = append(res.Workloads, w)
		all.hist.Merge(t.hist)
		all.reqs += t.reqs
		all.ok += t.ok
		for k, v := range t.errors {
			all.errors[k] += v
		}
	}
	res.All = all.result("all")
	return res, nil
}

// newClient returns a HostClient that dials with a plain net.Dialer (no
// fasthttp DNS cache goroutine), adding each connection to open unless
// open is nil.
func newClient(addr string, conns int, timeout time.Duration, open *connSet) *fasthttp.HostClient {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &fasthttp.HostClient{
		Addr: addr,
		Dial: func(a string) (net.Conn, error) {
			c, err := dialer.Dial("tcp", a)
			if err != nil {
				return nil, err
			}
			if open == nil {
				return c, nil
			}
			return open.add(c), nil
		},
		MaxConns:                 conns,
		MaxConnWaitTimeout:       timeout,
		MaxIdleConnDuration:      10 * time.Second,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
		MaxResponseBodySize:      MaxSize,
		ReadBufferSize:           16 << 10,
		// An agent's own client may retry; this one must not, or it would
		// hide failures and add side effects the proxy did not cause.
		MaxIdemponentCallAttempts: 1,
		RetryIfErr:                func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
}

type driver struct {
	ctx         context.Context // the run's: once it ends, nothing more is sent or counted
	conns       connSet         // the client's open connections
	cfg         LoadConfig
	client      *fasthttp.HostClient
	tallies     []*tally
	uris        []string
	measureFrom time.Time
	end         time.Time
	lastDone    atomic.Int64 // unix nanos of the last measured completion
	ended       atomic.Int64 // requests that ended within [measureFrom, end)
	lag         *tally       // the open loop's lateness issuing measured requests
	measureOnce sync.Once
	measuring   sync.WaitGroup // OnMeasure's goroutine
}

func (d *driver) startMeasuring() {
	d.measureOnce.Do(func() {
		if d.cfg.OnMeasure != nil {
			d.measuring.Go(d.cfg.OnMeasure)
		}
	})
}

// openLoop schedules request i at start + i/Rate, with a fine timer (see
// pacer), and records how late it issued each measured request in d.lag.
func (d *driver) openLoop(ctx context.Context, start time.Time) {
	jobs := make(chan job, 1<<14)
	var wg sync.WaitGroup
	for range d.cfg.Connections {
		wg.Go(func() {
			w := d.newWorker()
			defer w.release()
			for j := range jobs {
				if ctx.Err() == nil { // else drained unsent
					w.do(j, j.intended)
				}
			}
		})
	}
	d.schedule(ctx, start, jobs)
	close(jobs)
	wg.Wait()
}

// schedule sends request i to jobs at start + i/Rate until the end or ctx.
func (d *driver) schedule(ctx context.Context, start time.Time, jobs chan<- job) {
	p := newPacer()
	defer p.stop()
	perReq := float64(time.Second) / d.cfg.Rate
	for i := uint64(0); ; i++ {
		at := start.Add(time.Duration(float64(i) * perReq))
		if !at.Before(d.end) || !p.sleepUntil(ctx, at) {
			return
		}
		warm := at.Before(d.measureFrom)
		if !warm {
			d.startMeasuring()
			d.lag.record(time.Since(at), "")
		}
		select {
		case jobs <- job{n: i, intended: at, warm: warm}:
		case <-ctx.Done():
			return
		}
	}
}

// closedLoop runs Connections workers back to back until the end.
func (d *driver) closedLoop(ctx context.Context) {
	var next atomic.Uint64
	var wg sync.WaitGroup
	for range d.cfg.Connections {
		wg.Go(func() {
			w := d.newWorker()
			defer w.release()
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(d.end) {
					return
				}
				warm := now.Before(d.measureFrom)
				if !warm {
					d.startMeasuring()
				}
				w.do(job{n: next.Add(1) - 1, warm: warm}, now)
			}
		})
	}
	wg.Wait()
}

// worker owns one request/response pair.
type worker struct {
	d    *driver
	req  *fasthttp.Request
	resp *fasthttp.Response
	key  []byte
	body []byte
}

func (d *driver) newWorker() *worker {
	return &worker{d: d, req: fasthttp.AcquireRequest(), resp: fasthttp.AcquireResponse()}
}

func (w *worker) release() {
	fasthttp.ReleaseRequest(w.req)
	fasthttp.ReleaseResponse(w.resp)
}

// do sends job j with a deadline of Timeout from since (DoDeadline does
// not send it once that has passed) and records its latency from since.
func (w *worker) do(j job, since time.Time) {
	i := j.n % uint64(len(w.d.cfg.Workloads))
	wl := &w.d.cfg.Workloads[i]
	req := w.req
	req.Reset()
	req.SetRequestURI(w.d.uris[i])
	if wl.Method != "" {
		req.Header.SetMethod(wl.Method)
	}
	unique := wl.UniqueBody && len(wl.Body) > 1 && wl.Body[0] == '{'
	if wl.KeyHeader != "" || unique {
		w.key = w.key[:0]
		if j.warm {
			w.key = append(w.key, "warm-"...)
		}
		w.key = append(w.key, wl.Name...)
		w.key = append(w.key, '-')
		w.key = strconv.AppendUint(w.key, j.n, 10)
	}
	switch {
	case unique:
		w.body = append(w.body[:0], `{"op":"`...)
		w.body = append(w.body, w.key...)
		w.body = append(w.body, `",`...)
		w.body = append(w.body, wl.Body[1:]...)
		req.SetBodyRaw(w.body)
	case wl.Body != nil:
		req.SetBodyRaw(wl.Body)
	}
	if wl.ContentType != "" {
		req.Header.SetContentType(wl.ContentType)
	}
	if wl.KeyHeader != "" {
		req.Header.SetBytesV(wl.KeyHeader, w.key)
	}
	w.resp.Reset()
	err := w.d.client.DoDeadline(req, w.resp, since.Add(w.d.cfg.Timeout))
	if err != nil && w.d.ctx.Err() != nil {
		return // cut by the run's end (RunLoad): not the target's failure
	}
	done := time.Now()
	if !done.Before(w.d.measureFrom) && done.Before(w.d.end) {
		w.d.ended.Add(1)
	}
	if j.warm {
		return
	}
	w.d.tallies[i].record(done.Sub(since), classify(err, w.resp, wl))
	for {
		last := w.d.lastDone.Load()
		if done.UnixNano() <= last || w.d.lastDone.CompareAndSwap(last, done.UnixNano()) {
			break
		}
	}
}

// classify returns "" for agent-visible success, else the error class.
// An answer ballast degraded (degradedClass) is a failure whatever its
// status: the route did not serve it.
func classify(err error, resp *fasthttp.Response, wl *Workload) string {
	if err != nil {
		var ne net.Error
		if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) || (errors.As(err, &ne) && ne.Timeout()) {
			return "timeout"
		}
		return "transport"
	}
	if class := degradedClass(&resp.Header); class != "" {
		return class
	}
	switch s := resp.StatusCode(); {
	case s >= 200 && s < 300:
		if wl.Valid != nil && !wl.Valid(resp.Header.ContentType(), resp.Body()) {
			return "invalid"
		}
		return ""
	case s >= 300 && s < 400:
		return "3xx"
	case s == fasthttp.StatusTooManyRequests:
		return "429"
	case s >= 400 && s < 500:
		return "4xx"
	case s >= 500 && s < 600:
		return "5xx"
	default:
		return "status_" + strconv.Itoa(s)
	}
}
