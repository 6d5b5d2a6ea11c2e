package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/proxy"
)

// TestFreeze11_ShutdownUsesTheFrozenConfig: `ballast run` takes
// shutdown_timeout from FreezeConfig when a signal arrives; a reload after
// that (SIGHUP, a file change, POST /reload) must not change the
// shutdown_delay Shutdown reads later, or a new, long delay would use up
// the drain's whole timeout.
func TestFreeze11_ShutdownUsesTheFrozenConfig(t *testing.T) {
	up, _ := upstream(t, auditOK)
	b := startBallast(t, sdRoute(up, "0s", ""))
	cfg := b.srv.FreezeConfig()
	if d := cfg.ShutdownDelay.D(); d != 0 {
		t.Fatalf("frozen shutdown_delay %v, want 0s", d)
	}
	long := "shutdown_timeout: 2h\n" + sdRoute(up, "1h", "") // valid: the delay fits the timeout
	if err := writeConfig(b, long); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Reload(); !errors.Is(err, proxy.ErrShuttingDown) {
		t.Fatalf("Reload after FreezeConfig: %v, want ErrShuttingDown", err)
	}
	if code, body := opsReload(t, b, long); code != 503 {
		t.Errorf("POST /reload after FreezeConfig: %d %s, want 503", code, body)
	}
	if d := b.srv.Config().ShutdownDelay.D(); d != 0 {
		t.Fatalf("shutdown_delay in force %v after refused reloads, want 0s", d)
	}
	// Requests still run on the frozen config until the drain.
	if resp, _ := get(t, client(t), b.base+"/x"); resp.StatusCode != 200 {
		t.Errorf("request after FreezeConfig: %d, want 200", resp.StatusCode)
	}
	// With the frozen 0s delay the drain starts at once and finishes well
	// within the timeout; a 1h delay would have run until ctx ended.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v, want nil (no delay)", err)
	}
}
