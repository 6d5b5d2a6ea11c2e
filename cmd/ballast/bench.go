package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ballast-proxy/ballast/bench"
)

const benchUsage = `usage:
  ballast bench overhead [flags]   direct vs bare fasthttp proxy vs ballast (vs nginx on PATH)
  ballast bench chaos [flags]      success rate, p99 and duplicates under the standard fault profile
  ballast bench policies [flags]   CPU and latency of each policy alone vs ballast with everything off
  ballast bench state [flags]      keyed rps on the memory, file and redis stores vs unkeyed
  ballast bench stream [flags]     SSE streams: time to first event and each event's delay, direct vs
                                   ballast (vs nginx on PATH)
  ballast bench soak [flags]       ballast's RSS over time at a fixed rate (default 5m)
  ballast bench all [flags]        overhead, chaos, policies, state, stream (and soak with --soak)
  ballast bench upstream [--listen ADDR] [--size N] [--profile none|standard] [--seed N] [fault flags]
                                   the chaos upstream alone (ballast bench upstream -h lists its flags)

scenario flags: --duration D (10s; 5s per policies variant; 5m for soak) --warmup 1s --saturation 5s
                --rate N --connections 64 --size 1024 --seed 1 --timeout 5s --sample-every 5s
                --procs N (cores per proxy under test: 1; 2 for state)
                --rounds N (overhead, policies, state, stream: each target N times, taking turns; medians)
                --driver auto|go|wrk (overhead's saturation load: wrk -t1 when on PATH, else Go)
                --targets LIST (overhead: direct,bare,ballast,nginx; stream: direct,ballast,nginx;
                  policies: variants; state: stores)
                --stream-events 20 --stream-interval 10ms (stream: each answer's SSE events)
                --config FILE (overhead: your ballast config instead of the built-in chain, every
                  address rewritten to 127.0.0.1; see bench/README.md)
                --method POST --path /v1/chat/completions (overhead: the request)
                --cpuprofile DIR (overhead, policies: ballast's CPU profile of each open-loop
                  window, DIR/ballast-cpu-[VARIANT-]ROUND.pprof)
                --soak (all: include soak) --json (machine-readable output)
                --out DIR (RESULTS.md section, plot, JSON)
`

// cmdBench runs the benchmark harness.
func cmdBench(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, benchUsage)
		return 2
	}
	switch args[0] {
	case "upstream":
		return cmdBenchUpstream(args[1:], stdout, stderr)
	case "bare-proxy": // hidden: the harness's library-floor child
		return cmdBenchBareProxy(args[1:], stdout, stderr)
	case "overhead", "chaos", "policies", "state", "stream", "soak", "all":
		return cmdBenchScenario(args[0], args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, benchUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "ballast bench: unknown scenario %q\n\n%s", args[0], benchUsage)
		return 2
	}
}

func cmdBenchScenario(name string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.Options
	fs.DurationVar(&o.Duration, "duration", 0, "measured window of each load run (default 10s; 5s per policies variant; 5m for soak)")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "discarded warm-up before each load run (0: none)")
	fs.DurationVar(&o.Saturation, "saturation", 5*time.Second, "overhead: closed-loop phase per target (0: skip)")
	fs.Float64Var(&o.Rate, "rate", 0, fmt.Sprintf("open-loop requests per second (default %d for overhead and policies, %d for chaos, %d for soak; streams per second, %d, for stream)",
		bench.OverheadDefaultRate, bench.ChaosDefaultRate, bench.SoakDefaultRate, bench.StreamDefaultRate))
	fs.IntVar(&o.StreamEvents, "stream-events", bench.StreamDefaultEvents, "stream: SSE events per answer")
	fs.DurationVar(&o.StreamInterval, "stream-interval", bench.StreamDefaultInterval, "stream: pause between two events")
	fs.DurationVar(&o.SampleEvery, "sample-every", 5*time.Second, "soak: RSS sampling interval")
	withSoak := fs.Bool("soak", false, "all: include the soak scenario")
	fs.IntVar(&o.Connections, "connections", 64, "concurrent connections (the closed-loop N)")
	fs.IntVar(&o.Size, "size", 1024, "upstream JSON answer size in bytes")
	fs.Int64Var(&o.Seed, "seed", 1, "chaos upstream seed (any integer, 0 included)")
	fs.IntVar(&o.Rounds, "rounds", 1, "overhead, policies, state and stream: measure every target, variant or store this many times, taking turns, and report medians")
	fs.IntVar(&o.Procs, "procs", 0, "cores each proxy under test may use: GOMAXPROCS for ballast and the bare proxy, worker_processes for nginx (default 1; 2 for state)")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Second, "per-request timeout of the load driver")
	fs.StringVar(&o.Driver, "driver", bench.DriverAuto, "overhead: saturation load driver: wrk (wrk -t1, about one core; whole seconds), go (ballast's own), auto (wrk when on PATH, else go); the open loop always uses go")
	targets := fs.String("targets", "", "overhead targets, policies variants or state stores, comma-separated (default: all; nginx and redis when on PATH)")
	fs.StringVar(&o.Config, "config", "", "overhead: measure this ballast config file instead of the built-in chain, rewritten so that nothing leaves 127.0.0.1")
	fs.StringVar(&o.Method, "method", bench.OverheadMethod, "overhead: the request's method (the chat body goes with all but GET and HEAD)")
	fs.StringVar(&o.Path, "path", bench.OverheadPath, "overhead: the request's path")
	fs.StringVar(&o.CPUProfileDir, "cpuprofile", "", "overhead, policies: write ballast's CPU profile of each open-loop window into this directory (created)")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	out := fs.String("out", "", "write RESULTS.md's harness section, the plot and JSON into this directory")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "") {
		return parseExit(err)
	}
	if err := bench.CheckDriver(o.Driver); err != nil {
		fmt.Fprintf(stderr, "ballast bench %s: --driver: %v\n", name, err)
		return 2
	}
	var fc flagChecks
	fc.check(fs, "duration", o.Duration < 0, "must not be negative (0: the scenario's default)")
	fc.check(fs, "warmup", o.Warmup < 0, "must not be negative (0: none)")
	fc.check(fs, "saturation", o.Saturation < 0, "must not be negative (0: skip the closed loop)")
	fc.check(fs, "rate", !(o.Rate >= 0 && o.Rate <= maxBenchRate), fmt.Sprintf("must be a number of requests per second within 0–%d (0: the scenario's default)", maxBenchRate))
	fc.check(fs, "sample-every", o.SampleEvery <= 0, "must be positive")
	fc.check(fs, "connections", o.Connections < 1 || o.Connections > maxBenchConnections, fmt.Sprintf("must be within 1–%d", maxBenchConnections))
	fc.check(fs, "size", o.Size < 1 || o.Size > bench.MaxSize, fmt.Sprintf("must be within 1–%d bytes", bench.MaxSize))
	fc.check(fs, "rounds", o.Rounds < 1, "must be at least 1")
	fc.check(fs, "procs", o.Procs < 0, "must not be negative (0: the scenario's default)")
	fc.check(fs, "timeout", o.Timeout <= 0, "must be positive")
	fc.check(fs, "stream-events", o.StreamEvents < 1 || o.StreamEvents > maxStreamEvents, fmt.Sprintf("must be within 1–%d", maxStreamEvents))
	fc.check(fs, "stream-interval", o.StreamInterval <= 0 || o.StreamInterval > maxStreamInterval, fmt.Sprintf("must be positive and at most %v", maxStreamInterval))
	fc.check(fs, "method", bench.CheckRequest(o.Method, "") != nil, "must be upper-case letters")
	fc.check(fs, "path", o.Path == "" || bench.CheckRequest("", o.Path) != nil, "must start with / and hold no spaces or control characters")
	fs.Visit(func(f *flag.Flag) {
		if takers, ok := scenarioFlags[f.Name]; ok && !slices.Contains(takers, name) {
			fc.check(fs, f.Name, true, onlyTakers(takers))
		}
	})
	if fc.report(stderr, "bench "+name) {
		return 2
	}
	// A stream shape the driver cannot measure, or a chaos load the
	// harness will not keep in flight, fails here, before any scenario
	// runs: with all, chaos and stream run after overhead.
	var shapeErrs []error
	if name == "stream" || name == "all" {
		shapeErrs = append(shapeErrs, bench.CheckStream(o))
	}
	if name == "chaos" || name == "all" {
		shapeErrs = append(shapeErrs, bench.CheckChaos(o))
	}
	if err := errors.Join(shapeErrs...); err != nil {
		fmt.Fprintf(stderr, "ballast bench %s: %v\n", name, err)
		return 2
	}
	// Zero means "default" in Options; on the command line 0 means none.
	if o.Warmup == 0 {
		o.Warmup = -1
	}
	if o.Saturation == 0 {
		o.Saturation = -1
	}
	if *targets != "" {
		o.Targets = strings.Split(*targets, ",")
	}
	if name != "overhead" {
		o.Method, o.Path = "", "" // the flags' defaults; the other scenarios' requests are their own
	}
	// Only the stream scenario takes the stream flags (their defaults
	// included): with all, they are set just before it runs.
	streamEvents, streamInterval := o.StreamEvents, o.StreamInterval
	o.StreamEvents, o.StreamInterval = 0, 0
	o.Progress = stderr
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	rep := &bench.Report{
		Machine:  bench.ThisMachine(),
		Date:     time.Now().UTC().Format(time.RFC3339),
		Commands: []string{"ballast bench " + name + " " + strings.Join(args, " ")},
	}
	var err error
	if name == "overhead" || name == "all" {
		rep.Overhead, err = bench.Overhead(ctx, o)
	}
	if name == "all" {
		o.Targets = nil // with all, --targets names overhead targets only
	}
	// Without --rate or --duration, each scenario keeps its own defaults.
	if err == nil && (name == "chaos" || name == "all") {
		rep.Chaos, err = bench.Chaos(ctx, o)
	}
	if err == nil && (name == "policies" || name == "all") {
		rep.Policies, err = bench.Policies(ctx, o)
	}
	if err == nil && (name == "state" || name == "all") {
		rep.State, err = bench.State(ctx, o)
	}
	if err == nil && (name == "stream" || name == "all") {
		o.StreamEvents, o.StreamInterval = streamEvents, streamInterval
		rep.Stream, err = bench.Stream(ctx, o)
	}
	if err == nil && (name == "soak" || (name == "all" && *withSoak)) {
		rep.Soak, err = bench.Soak(ctx, o)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench %s: %v\n", name, err)
		if errors.Is(err, bench.ErrConfig) {
			return 2 // --config's file, or --path and --method against it: the user's to change
		}
		return 1
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err == nil && *out != "" {
		err = rep.WriteOut(*out)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench %s: %v\n", name, err)
		return 1
	}
	return 0
}

func cmdBenchUpstream(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "address to serve on")
	var cfg bench.UpstreamConfig
	fs.IntVar(&cfg.Size, "size", 1024, "size of the JSON answer in bytes")
	profile := fs.String("profile", "none", "fault profile: "+strings.Join(bench.ProfileNames(), ", "))
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of fault and latency draws")
	fs.IntVar(&cfg.StreamEvents, "stream-events", 16, "SSE events per stream")
	fs.DurationVar(&cfg.StreamInterval, "stream-interval", 0, "pause between SSE events")
	fs.BoolVar(&cfg.StreamStamp, "stream-stamp", false, `stamp each SSE event with the moment it is written ("sent_ns", Unix nanoseconds) and flush it on its own`)
	var p bench.Profile
	fs.DurationVar(&p.LatencyFixed, "latency-fixed", 0, "fixed latency added to every answer")
	fs.DurationVar(&p.LatencyExpMean, "latency-exp", 0, "mean of an exponential latency added on top")
	fs.Float64Var(&p.Error500, "p500", 0, "percent answered 500")
	fs.Float64Var(&p.Error503, "p503", 0, "percent answered 503")
	fs.Float64Var(&p.RateLimited, "p429", 0, "percent answered 429 with provider reset headers")
	fs.Float64Var(&p.Malformed, "malformed", 0, "percent answered with malformed JSON")
	fs.Float64Var(&p.Reset, "reset", 0, "percent whose connection is reset")
	fs.Float64Var(&p.Hang, "hang", 0, "percent that never answer")
	fs.Float64Var(&p.CutStream, "cut", 0, "percent of streams cut half-way")
	fs.DurationVar(&p.RetryAfter, "retry-after", time.Second, "reset hint sent with 429s, when set overriding the profile's (standard: 100ms)")
	fs.DurationVar(&p.HangFor, "hang-for", time.Minute, "how long a hang lasts")
	fs.IntVar(&cfg.MaxKeys, "max-keys", bench.DefaultMaxKeys, "operation keys the side-effect counters keep, the least recently seen evicted first (counted as evicted_keys)")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "") {
		return parseExit(err)
	}
	var fc flagChecks
	fc.check(fs, "size", cfg.Size < 1 || cfg.Size > bench.MaxSize, fmt.Sprintf("must be within 1–%d bytes", bench.MaxSize))
	fc.check(fs, "stream-events", cfg.StreamEvents < 1, "must be at least 1")
	fc.check(fs, "stream-interval", cfg.StreamInterval < 0, "must not be negative")
	fc.check(fs, "max-keys", cfg.MaxKeys < 1, "must be at least 1")
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"latency-fixed", p.LatencyFixed}, {"latency-exp", p.LatencyExpMean}, {"retry-after", p.RetryAfter}, {"hang-for", p.HangFor}} {
		fc.check(fs, d.name, d.v < 0, "must not be negative")
	}
	for _, pct := range []struct {
		name string
		v    float64
	}{{"p500", p.Error500}, {"p503", p.Error503}, {"p429", p.RateLimited}, {"malformed", p.Malformed}, {"reset", p.Reset}, {"hang", p.Hang}, {"cut", p.CutStream}} {
		fc.check(fs, pct.name, !(pct.v >= 0 && pct.v <= 100), "must be a percentage within 0–100")
	}
	if fc.report(stderr, "bench upstream") {
		return 2
	}
	named, err := bench.NamedProfile(*profile)
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench upstream: %v\n", err)
		return 2
	}
	// Fault flags given on the command line override the named profile and
	// rename it NAME+custom; --retry-after and --hang-for only time the
	// hints and hangs, and keep the name.
	custom := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "latency-fixed":
			named.LatencyFixed = p.LatencyFixed
		case "latency-exp":
			named.LatencyExpMean = p.LatencyExpMean
		case "p500":
			named.Error500 = p.Error500
		case "p503":
			named.Error503 = p.Error503
		case "p429":
			named.RateLimited = p.RateLimited
		case "malformed":
			named.Malformed = p.Malformed
		case "reset":
			named.Reset = p.Reset
		case "hang":
			named.Hang = p.Hang
		case "cut":
			named.CutStream = p.CutStream
		case "retry-after":
			named.RetryAfter = p.RetryAfter
			return
		default:
			return
		}
		custom = true
	})
	if custom {
		named.Name = named.Name + "+custom"
	}
	named.HangFor = p.HangFor
	if named.RetryAfter <= 0 {
		named.RetryAfter = p.RetryAfter // the flag's default, for profiles that set none
	}
	if err := named.Validate(); err != nil {
		fmt.Fprintf(stderr, "ballast bench upstream: %v\n", err)
		return 2
	}
	cfg.Profile = named
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench upstream: %v\n", err)
		return 1
	}
	u := bench.NewUpstream(cfg)
	fmt.Fprintf(stdout, "bench upstream on http://%s (%d-byte JSON answers, profile %s, seed %d)\n", ln.Addr(), cfg.Size, named.Name, cfg.Seed)
	return serveUntilSignal(u.Serve, u.Shutdown, ln, "bench upstream", stderr)
}

func cmdBenchBareProxy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench bare-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := fs.String("upstream", "", "upstream host:port")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "") {
		return parseExit(err)
	}
	if *upstream == "" {
		fmt.Fprintln(stderr, "ballast bench bare-proxy: --upstream is required")
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench bare-proxy: %v\n", err)
		return 1
	}
	p := bench.NewBareProxy(*upstream)
	fmt.Fprintf(stdout, "bare proxy on http://%s to %s\n", ln.Addr(), *upstream)
	return serveUntilSignal(p.Serve, p.Shutdown, ln, "bench bare-proxy", stderr)
}

// scenarioFlags are the scenario flags only some scenarios take, with
// those scenarios; any other refuses them (a usage error), all included.
var scenarioFlags = map[string][]string{
	"config":          {"overhead"},
	"method":          {"overhead"},
	"path":            {"overhead"},
	"cpuprofile":      {"overhead", "policies"},
	"stream-events":   {"stream", "all"},
	"stream-interval": {"stream", "all"},
}

// onlyTakers says which scenarios take a flag: "only overhead takes it".
func onlyTakers(scenarios []string) string {
	if len(scenarios) == 1 {
		return "only " + scenarios[0] + " takes it"
	}
	return "only " + strings.Join(scenarios, " and ") + " take it"
}

// Upper bounds on scenario flags: far beyond what one machine's loopback
// serves, and low enough that a typo cannot make the driver schedule
// requests for hours (--rate) or start a goroutine per connection until
// memory runs out (--connections).
const (
	maxBenchRate        = 1_000_000
	maxBenchConnections = 100_000
	maxStreamEvents     = 100_000
	maxStreamInterval   = time.Minute
)

// parseExit is the exit code of a failed fs.Parse (or a stray
// argument, err nil): 0 when help was asked for (-h, --help), else 2.
func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// flagChecks collects the flags given with a value they cannot take, to
// report them all at once.
type flagChecks struct{ errs []error }

// check records flag name as bad when bad is true: "--name VALUE: msg".
func (c *flagChecks) check(fs *flag.FlagSet, name string, bad bool, msg string) {
	if bad {
		c.errs = append(c.errs, fmt.Errorf("--%s %s: %s", name, fs.Lookup(name).Value, msg))
	}
}

// report prints each bad flag on its own line, prefixed by the command,
// and reports whether there was one (a usage error, exit 2).
func (c *flagChecks) report(stderr io.Writer, cmd string) bool {
	for _, err := range c.errs {
		fmt.Fprintf(stderr, "ballast %s: %v\n", cmd, err)
	}
	return len(c.errs) > 0
}

// serveUntilSignal serves on ln until SIGTERM or SIGINT.
func serveUntilSignal(serve func(net.Listener) error, shutdown func() error, ln net.Listener, name string, stderr io.Writer) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() { <-sigs; _ = shutdown() }()
	if err := serve(ln); err != nil {
		fmt.Fprintf(stderr, "ballast %s: %v\n", name, err)
		return 1
	}
	return 0
}
