package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"
)

// Options configure a scenario run. The zero value of each field means its
// default, except Seed: every seed, 0 included, is used as given.
type Options struct {
	// Exe is the ballast binary the children run (`bench upstream`,
	// `bench bare-proxy`, `run -c`). Default: os.Executable().
	Exe string
	// Duration is the measured window of each load run. Default 10s; 5s
	// per variant for policies, 5m for soak.
	Duration time.Duration
	// Warmup precedes each load run and is discarded. Default 1s; negative
	// means none.
	Warmup time.Duration
	// Saturation is the closed-loop phase per overhead target. Default 5s;
	// negative skips it.
	Saturation time.Duration
	// Rate is the open-loop rate in requests per second (streams per
	// second for stream). Default 2,000 for overhead and policies, 200
	// for chaos, 500 for soak, 100 for stream.
	Rate float64
	// Connections caps concurrent requests; it is also the closed-loop N.
	// Default 64.
	Connections int
	// Size is the upstream's JSON answer size in bytes. Default 1024; at
	// most MaxSize.
	Size int
	// Procs is how many cores each proxy under test may use: GOMAXPROCS
	// for ballast and the bare fasthttp proxy, worker_processes for nginx.
	// Default 1 — ballast's own choice for a sidecar, and the issue's
	// reference of nginx with one worker — except for state, where it is 2
	// for every store: what ballast chooses with the file store, given to
	// each so that the ratios compare like with like. The load driver and
	// the upstream keep Go's default.
	Procs int
	// Rounds is how many times the overhead and stream scenarios measure
	// every target, the policies scenario every variant and the state
	// scenario every store, taking turns. Default 1.
	Rounds int
	// Seed seeds the chaos upstream's fault and latency draws. 0 is a seed
	// like any other (the command line's default is 1), as it is for
	// `ballast bench upstream --seed`.
	Seed int64
	// Timeout bounds each request of the load driver. Default 5s.
	Timeout time.Duration
	// Driver drives the overhead scenario's saturation phase: DriverWrk
	// (`wrk -t1 -c<Connections>`, about one core, the reference
	// client), DriverGo (RunLoad's closed loop, which takes more of a small
	// machine from the target under test) or DriverAuto: wrk when it is on
	// PATH, else Go. Default (""): auto. wrk counts whole seconds, so
	// Saturation, Warmup and Timeout round up to the next second for it.
	// The open-loop phase and every other scenario always use the Go driver
	// (wrk's closed loop cannot hold a fixed rate without coordinated
	// omission). An unknown name is an ErrDriver error in every scenario;
	// wrk asked for by name and not on PATH, in the overhead scenario.
	Driver string
	// Targets limits the overhead targets to these names (direct, bare,
	// ballast, nginx), the policies variants (off is always run: it is the
	// baseline) or the state stores (unkeyed, memory, file, redis). Empty
	// means all; nginx and redis only when on PATH.
	Targets []string
	// SampleEvery is soak's RSS sampling interval. Default 5s.
	SampleEvery time.Duration
	// Config, when set, is a ballast config file the overhead scenario
	// measures in place of its built-in chain: loaded as `ballast run -c`
	// loads it, then rewritten so that nothing leaves 127.0.0.1 (see
	// userConfig.rewrite). Reports name the file, never its contents.
	// Default: the built-in chain (ballast.yaml.tmpl). The other scenarios
	// refuse it (ErrLoad).
	Config string
	// Method and Path are the overhead scenario's request. Default POST
	// /v1/chat/completions. The chat body (and its content type) goes
	// with every method but GET and HEAD. Path must start with / and hold
	// no spaces or control characters; Method is upper-case letters. The
	// other scenarios refuse them (ErrLoad): their requests are fixed.
	Method, Path string
	// CPUProfileDir, when set, makes the overhead and policies scenarios
	// fetch a CPU profile from each ballast child's admin listener over
	// its open-loop window (profileSeconds(Duration) long, from the start
	// of the measured window, never the warm-up) and write it to
	// DIR/ballast-cpu-<round>.pprof (overhead) or
	// DIR/ballast-cpu-<variant>-<round>.pprof (policies), creating DIR. The
	// profiler costs ballast a little CPU (SIGPROF at 100 Hz), which that
	// window's figures include. A failed fetch fails the run. The other
	// scenarios refuse it (ErrLoad). Default: no profile.
	CPUProfileDir string
	// StreamEvents and StreamInterval shape the stream scenario's
	// answers: that many SSE events, one every StreamInterval. Default 20
	// events 10 ms apart, a model writing 100 tokens a second. The other
	// scenarios refuse them (ErrLoad).
	StreamEvents   int
	StreamInterval time.Duration
	// Progress receives one line per step. Default: discarded.
	Progress io.Writer
}

// MaxSize is the largest answer the chaos upstream builds and the load
// driver reads: 64 MiB.
const MaxSize = 64 << 20

func (o Options) withDefaults(rate float64) (Options, error) {
	return o.withScenarioDefaults(rate, 10*time.Second)
}

// withScenarioDefaults fills the zero fields, with rate and duration as
// this scenario's defaults.
func (o Options) withScenarioDefaults(rate float64, duration time.Duration) (Options, error) {
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("bench: finding the ballast binary: %w", err)
		}
		o.Exe = exe
	}
	if err := CheckDriver(o.Driver); err != nil {
		return o, err
	}
	if o.Driver == "" {
		o.Driver = DriverAuto
	}
	if o.Duration <= 0 {
		o.Duration = duration
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = 5 * time.Second
	}
	switch {
	case o.Warmup == 0:
		o.Warmup = time.Second
	case o.Warmup < 0:
		o.Warmup = 0
	}
	switch {
	case o.Saturation == 0:
		o.Saturation = 5 * time.Second
	case o.Saturation < 0:
		o.Saturation = 0
	}
	if math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return o, fmt.Errorf("%w: rate %v is not a finite number of requests per second", ErrLoad, o.Rate)
	}
	if o.Rate <= 0 {
		o.Rate = rate
	}
	if o.Connections <= 0 {
		o.Connections = 64
	}
	if o.Size <= 0 {
		o.Size = 1024
	}
	if o.Size > MaxSize {
		return o, fmt.Errorf("%w: size %d is above the %d bytes the load driver reads", ErrLoad, o.Size, MaxSize)
	}
	if o.Rounds <= 0 {
		o.Rounds = 1
	}
	if o.Procs <= 0 {
		o.Procs = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o, nil
}

// only refuses the options that scenario, other than overhead, does not
// take: the built-in workloads of the other scenarios cannot be changed,
// and only policies profiles ballast too.
func (o Options) only(scenario string) error {
	var set []string
	if o.Config != "" {
		set = append(set, "Config (overhead only)")
	}
	if o.Method != "" || o.Path != "" {
		set = append(set, "Method and Path (overhead only)")
	}
	if o.CPUProfileDir != "" && scenario != "policies" {
		set = append(set, "CPUProfileDir (overhead and policies only)")
	}
	if (o.StreamEvents != 0 || o.StreamInterval != 0) && scenario != "stream" {
		set = append(set, "StreamEvents and StreamInterval (stream only)")
	}
	if len(set) > 0 {
		return fmt.Errorf("%w: the %s scenario does not take %s", ErrLoad, scenario, strings.Join(set, ", "))
	}
	return nil
}

// Settings are the options a scenario ran with, for reports.
type Settings struct {
	Duration    string  `json:"duration"`
	Warmup      string  `json:"warmup"`
	Saturation  string  `json:"saturation,omitempty"`
	Rate        float64 `json:"rate"`
	Connections int     `json:"connections"`
	Size        int     `json:"size"`
	Seed        int64   `json:"seed"`
	Timeout     string  `json:"timeout"`
	Procs       int     `json:"procs"`
	SampleEvery string  `json:"sample_every,omitempty"`
	// Rounds is set by the overhead, policies, state and stream scenarios
	// only.
	Rounds int `json:"rounds,omitempty"`
	// SaturationDriver is the driver of the overhead scenario's saturation
	// phase, DriverGo or DriverWrk; empty when there was none.
	SaturationDriver string `json:"saturation_driver,omitempty"`
}

func (o Options) settings() Settings {
	s := Settings{Duration: o.Duration.String(), Warmup: o.Warmup.String(), Rate: o.Rate,
		Connections: o.Connections, Size: o.Size, Seed: o.Seed, Timeout: o.Timeout.String(), Procs: o.Procs}
	if o.Saturation > 0 {
		s.Saturation = o.Saturation.String()
	}
	return s
}
