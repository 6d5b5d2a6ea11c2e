package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium finds the browser the status page test renders in. The test
// never skips: CI installs chromium first (scripts/test-deps.sh).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed; the status page test renders the page in it. " +
		"Run scripts/test-deps.sh (as root; it runs apt-get install -y chromium), or make test, which runs it first")
	return ""
}

// runChromium runs headless chromium with args after the common flags,
// in a throwaway profile, and returns its stdout.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	common := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}
	cmd := exec.CommandContext(ctx, bin, append(common, args...)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestStatusPageRendersInABrowser loads the status page in headless
// chromium through the token sign-in, lets its script fetch /status, and
// checks the rendered DOM shows the live routes, numbers and failure
// reasons. It keeps a screenshot in testdata/artifacts/status.png.
func TestStatusPageRendersInABrowser(t *testing.T) {
	bin := chromium(t)
	b, toolsAddr := statusTraffic(t)
	page := b.admin + "/?token=adm-s3cret" // signs in, then redirects to /

	dom := runChromium(t, bin, "--dump-dom", page)
	checks := []struct {
		name string
		re   string
	}{
		{"the script fetched /status (the session cookie worked)", `id="state" class="state state-live"`},
		{"the tools route card", `<article class="route health-(degraded|failing)" data-route="tools" data-health="(degraded|failing)">`},
		{"the flaky route, failing", `<article class="route health-failing" data-route="flaky" data-health="failing">`},
		{"the tools upstream row", `data-upstream="` + regexp.QuoteMeta(toolsAddr) + `"`},
		{"the open breaker", `class="badge b-open">open<`},
		{"the success ratio", `<span class="v">75%</span><span class="l">success</span>`},
		{"the retries", `<span class="v">2</span><span class="l">retries</span>`},
		{"the window counts", `8 requests, 2 failed in the window; 8 since start`},
		{"a failure reason", `<td class="reason">breaker_open</td>`},
		{"a transport failure's reason", `<td class="reason">upstream_unavailable</td>`},
		{"the failure's class and cause", `<td>transient / connect-failure</td>`},
		{"an agent's request id", `<td class="rid">agent-req-1</td>`},
		{"a sparkline", `<path d="M0,38 L0.0,`},
	}
	for _, c := range checks {
		if !regexp.MustCompile(c.re).MatchString(dom) {
			t.Errorf("the rendered page lacks %s (%s)", c.name, c.re)
		}
	}
	for _, secret := range []string{"adm-s3cret", "sk-live-999", "literal-secret-value"} {
		if strings.Contains(dom, secret) {
			t.Errorf("the rendered page shows the secret %q", secret)
		}
	}
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", dom)
	}

	// The screenshot is taken in the test's own directory (two suites
	// run side by side share testdata/) and then kept as an artifact.
	taken := filepath.Join(t.TempDir(), "status.png")
	runChromium(t, bin, "--screenshot="+taken, "--window-size=1280,900", page)
	png, err := os.ReadFile(taken)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 20<<10 {
		t.Errorf("the screenshot is not a rendered page: %d bytes", len(png))
	}
	dir := filepath.Join("..", "testdata", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(dir, "status.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log(fmt.Sprintf("screenshot: %s (%d bytes)", shot, len(png)))
}
