package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/logsink"
	"github.com/ballast-proxy/ballast/proxy"
)

// configSource resolves -c: the flag, else ./ballast.yaml when present,
// else the embedded default.
func configSource(file string, flags map[string]any) config.Source {
	if file == "" {
		if _, err := os.Stat(config.DefaultFile); err == nil {
			file = config.DefaultFile
		}
	}
	return config.Source{File: file, Flags: flags}
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "config file (default ./ballast.yaml, else the embedded default)")
	listen := fs.String("listen", "", "override listen")
	admin := fs.String("admin", "", "override admin.listen")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "c") {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "ballast: --log-level: %v\n", err)
		return 2
	}
	// Every log line, the trail's too, goes through one sink: a stuck
	// stderr reader never holds a request up, and lines never interleave.
	sink := logsink.New(stderr, 0)
	defer sink.Close(2 * time.Second)
	log := slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: level}))

	flags := map[string]any{}
	if *listen != "" {
		flags["listen"] = *listen
	}
	if *admin != "" {
		flags["admin.listen"] = *admin
	}
	src := configSource(*file, flags)
	cfg, err := config.Load(src)
	if err != nil {
		printProblems(stderr, src.Origin(), err)
		return 1
	}
	procs, from := applyProcs(cfg, os.Getenv("GOMAXPROCS"))
	log.Info("cores", "procs", procs, "from", from)
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Source: &src, AccessLog: sink})
	if err != nil {
		fmt.Fprintf(stderr, "ballast: %v\n", err)
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintf(stderr, "ballast: listen: %v\n", err)
		return 1
	}
	adminLn, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "ballast: admin listen: %v\n", err)
		return 1
	}
	return serve(srv, cfg, src, ln, adminLn, log)
}

func serve(srv *proxy.Server, cfg *config.Config, src config.Source, ln, adminLn net.Listener, log *slog.Logger) int {
	// Signals are ours before the first request can be served: a SIGTERM
	// as soon as /readyz answers must drain, not kill.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	errc := make(chan error, 2)
	go func() { errc <- srv.ServeAdmin(adminLn) }()
	go func() { errc <- srv.Serve(ln) }()

	base := "http://" + ln.Addr().String()
	log.Info("ballast is running",
		"version", ballastVersion(), "config", src.Origin(), "listen", ln.Addr().String(),
		"admin", adminLn.Addr().String(), "routes", len(cfg.Routes))
	if src.File == "" {
		log.Info("embedded default config: point your SDKs here",
			"OPENAI_BASE_URL", base+"/openai/v1", "ANTHROPIC_BASE_URL", base+"/anthropic")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if src.File != "" {
		go func() {
			if err := srv.WatchConfig(ctx, 200*time.Millisecond); err != nil && !errors.Is(err, proxy.ErrNoSource) {
				log.Warn("config file watch unavailable; use SIGHUP or POST /reload", "error", err.Error())
			}
		}()
	}

	for {
		select {
		case err := <-errc:
			if err != nil {
				log.Error("listener failed", "error", err.Error())
				return 1
			}
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				_ = srv.Reload()
				continue
			}
			cfg := srv.FreezeConfig() // the timeout and the delay from one config
			timeout := cfg.ShutdownTimeout.D()
			log.Info("draining", "signal", sig.String(), "shutdown_timeout", timeout.String(),
				"shutdown_delay", cfg.ShutdownDelay.D().String())
			// shutdown_delay, then the drain, both within shutdown_timeout.
			sctx, scancel := context.WithTimeout(context.Background(), timeout)
			// A second SIGTERM or SIGINT (Ctrl-C again) cuts the drain
			// short, as in most servers, and shutdown_delay with it: what
			// runs is abandoned, and the state store still closes.
			forced := make(chan os.Signal, 1)
			go func() {
				for {
					select {
					case s2 := <-sigs:
						if s2 == syscall.SIGHUP {
							// Not Reload: it would wait for a reload
							// still running, and a second SIGTERM must
							// not wait behind it.
							log.Warn("config reload ignored: ballast is shutting down", "signal", s2.String())
							continue
						}
						forced <- s2
						scancel()
						return
					case <-sctx.Done():
						return
					}
				}
			}()
			err := srv.Shutdown(sctx)
			scancel()
			select {
			case s2 := <-forced:
				log.Warn("second signal: exited without waiting for the drain", "signal", s2.String())
				log.Info("stopped")
				return 1
			default:
			}
			code := reportShutdown(log, err)
			log.Info("stopped")
			return code
		}
	}
}

func printProblems(w io.Writer, origin string, err error) {
	problems := config.Problems(err)
	fmt.Fprintf(w, "ballast: %s: %d problem(s):\n", origin, len(problems))
	for _, p := range problems {
		fmt.Fprintf(w, "  %v\n", p)
	}
}

// reportShutdown logs how the drain ended, when it did not end cleanly,
// and returns the exit code. A drain that ran out of shutdown_timeout (or
// was cut short by a second signal) exits 0, as documented: ballast did
// what it was told. Anything else is something that failed to close (the
// state store, whose own line says what it may have lost), and exits 1 so
// that a process supervisor hears of it.
func reportShutdown(log *slog.Logger, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		log.Warn("drain did not finish in time; exiting", "error", err.Error())
		return 0
	}
	log.Error("shutdown failed; exiting", "error", err.Error())
	return 1
}
