package redisconn

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewInvalid(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts Options
	}{
		{name: "no address", opts: Options{}},
		{name: "missing CA file", opts: Options{Addr: "localhost:6379", TLS: true, CAFile: filepath.Join(dir, "absent.pem")}},
		{name: "CA file without certificates", opts: Options{Addr: "localhost:6379", TLS: true, CAFile: notPEM}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := New(tt.opts); !errors.Is(err, ErrInvalid) {
				if c != nil {
					_ = c.Close()
				}
				t.Fatalf("New = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestNewAppliesOptions(t *testing.T) {
	c, err := New(Options{Addr: "db.internal:6380", TLS: true, Username: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.Options()
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "db.internal" || o.TLSConfig.RootCAs != nil {
		t.Errorf("TLS config = %+v, want server name db.internal and system roots", o.TLSConfig)
	}
	if o.DialTimeout != DefaultDialTimeout || o.ReadTimeout != DefaultReadTimeout || o.WriteTimeout != DefaultWriteTimeout {
		t.Errorf("timeouts = %v/%v/%v, want the defaults", o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
	}
	if !o.ContextTimeoutEnabled || o.Username != "u" || o.Password != "p" {
		t.Errorf("options = %+v", o)
	}
}

func TestWatchHealthReportsChanges(t *testing.T) {
	srv := redistest.Start(t)
	c, err := New(Options{Addr: srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	clock := policy.NewFakeClock(time.Unix(0, 0))
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan bool, 8)
	done := make(chan struct{})
	go func() {
		WatchHealth(ctx, c, clock, time.Second, func(up bool) { changes <- up })
		close(done)
	}()
	// tick fires the watcher's timer once it sleeps on it, then waits
	// until it sleeps again: by then the probe's report, if any, is sent.
	awaitSleep := func() {
		for clock.Waiters() == 0 {
			runtime.Gosched()
		}
	}
	tick := func() {
		awaitSleep()
		clock.Advance(time.Second)
		awaitSleep()
	}
	report := func() (up, ok bool) {
		select {
		case up = <-changes:
			return up, true
		default:
			return false, false
		}
	}
	if up := <-changes; !up {
		t.Fatal("first report = down, want up")
	}
	tick()
	if up, ok := report(); ok {
		t.Fatalf("report %v while nothing changed", up)
	}
	srv.Kill()
	tick()
	if up, ok := report(); !ok || up {
		t.Fatalf("report after Kill = %v (reported: %v), want down", up, ok)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// go-redis may need a few probes to dial again after its pool saw failed
	// dials (it probes the server once a second in the background); each
	// tick probes once.
	for {
		tick()
		if up, ok := report(); ok {
			if !up {
				t.Fatal("a second down report without an up in between")
			}
			break
		}
	}
	cancel()
	<-done
}
