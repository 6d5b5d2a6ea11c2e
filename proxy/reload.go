package proxy

import (
	"context"
	"errors"
	"path/filepath"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/fsnotify/fsnotify"
)

// ErrNoSource is returned by Reload on a Server built without Options.Source.
var ErrNoSource = errors.New("proxy: no config source to reload from")

// ErrShuttingDown is returned by Reload once Shutdown has begun.
var ErrShuttingDown = errors.New("proxy: shutting down; the config in force stays until the exit")

// Reload reads the config again from the Server's source, validates it and
// swaps it in. An invalid config is refused: the old one stays in force,
// the errors are logged and counted, and returned.
//
// Once Shutdown has begun, Reload changes nothing and returns
// ErrShuttingDown (a SIGHUP, a file change or POST /reload during the
// drain, or after it): the requests still draining finish on the table
// they started with, and what Shutdown is closing is not built anew.
// Shutdown waits for a reload already running before it closes anything.
func (s *Server) Reload() error {
	if s.src == nil {
		return ErrNoSource
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.draining.Load() || s.frozen {
		s.log.Warn("config reload ignored: ballast is shutting down", "source", s.src.Origin())
		return ErrShuttingDown
	}
	cfg, err := config.Load(*s.src)
	if err == nil {
		err = s.Apply(cfg)
	}
	if err != nil {
		s.m.reloads.WithLabelValues("failure").Inc()
		var msgs []string
		for _, e := range config.Problems(err) {
			msgs = append(msgs, e.Error())
		}
		s.log.Error("config reload refused; the previous config stays in force", "source", s.src.Origin(), "errors", msgs)
		return err
	}
	s.m.reloads.WithLabelValues("success").Inc()
	s.log.Info("config reloaded", "source", s.src.Origin(), "routes", len(cfg.Routes))
	return nil
}

// FreezeConfig ends reloading for good and returns the config in force,
// which then stays in force to the exit: a reload already running
// finishes first, and later ones change nothing, as during a drain
// (Reload returns ErrShuttingDown). Call it when a shutdown is decided,
// to take shutdown_timeout for Shutdown's context: shutdown_delay, which
// Shutdown reads later, then comes from the same config, where a reload
// in between could otherwise set a delay that uses up the drain's time.
func (s *Server) FreezeConfig() *config.Config {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.frozen = true
	return s.Config()
}

// WatchConfig reloads whenever the config file changes, until ctx ends.
// It watches the file's directory, so editors that replace the file by
// renaming (and Kubernetes ConfigMap symlink swaps) are seen too. Bursts
// of events within debounce collapse into one reload.
func (s *Server) WatchConfig(ctx context.Context, debounce time.Duration) error {
	if s.src == nil || s.src.File == "" {
		return ErrNoSource
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	file, _ := filepath.Abs(s.src.File)
	if err := w.Add(filepath.Dir(file)); err != nil {
		return err
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			name, _ := filepath.Abs(ev.Name)
			if name != file && filepath.Base(ev.Name) != "..data" {
				continue
			}
			timer = time.After(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("config watch error", "error", err.Error())
		case <-timer:
			timer = nil
			_ = s.Reload()
		}
	}
}
