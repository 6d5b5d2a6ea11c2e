package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/supervise"
)

// Alerts reach notify.webhook when a breaker opens, an upstream asks for a
// long cool-down and a retry budget is spent; the URL stays secret.
func TestAlertsReachTheWebhook(t *testing.T) {
	events := make(chan supervise.Event, 32)
	hook, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err == nil {
			events <- e
		}
	})
	limited, limitedAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
	})
	failing, failingAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	dead := deadAddr(t)
	b := startBallast(t, fmt.Sprintf(`
notify: {webhook: "${HOOK}", cooldown_threshold: 30s}
routes:
  - {name: flaky, match: {path_prefix: /flaky/}, upstream: "http://%s", retry: {attempts: 1}, breaker: {failures: 1, open_for: 1m}}
  - {name: limited, match: {path_prefix: /limited/}, upstream: %q, retry: {attempts: 2}, timeouts: {total: 5s}}
  - name: nobudget
    match: {path_prefix: /nobudget/}
    upstream: %q
    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 0}}
    breaker: {enabled: false}
`, dead, limited, failing), "HOOK="+hook+"/hooks/T0/s3cr3t-path")
	c := client(t)
	for range 3 {
		get(t, c, b.base+"/flaky/x")
		get(t, c, b.base+"/limited/x")
		get(t, c, b.base+"/nobudget/x")
	}

	want := map[supervise.Kind]string{
		supervise.KindBreakerOpen:     "flaky " + dead,
		supervise.KindCooldown:        "limited " + limitedAddr,
		supervise.KindBudgetExhausted: "nobudget " + failingAddr,
	}
	got := map[supervise.Kind]int{}
	timeout := time.After(10 * time.Second)
	for len(got) < len(want) {
		select {
		case e := <-events:
			got[e.Kind]++
			if w, ok := want[e.Kind]; !ok || e.Route+" "+e.Upstream != w {
				t.Errorf("unexpected event %+v", e)
			}
			if e.Source != "ballast" || e.Text == "" || e.Time.IsZero() {
				t.Errorf("event %+v lacks source, text or time", e)
			}
		case <-timeout:
			t.Fatalf("events after 10s: %v, want one of each of %v", got, want)
		}
	}
	// Repeats of the same alert are deduplicated: each kind arrived once.
	select {
	case e := <-events:
		t.Errorf("a duplicate got through: %+v", e)
	default:
	}
	// The webhook got each event before it answered; the notifier counts
	// one sent when the answer arrives.
	waitFor(t, func() bool {
		snap, _ := fetchStatusOpen(t, b)
		return snap.Alerts != nil && snap.Alerts.Sent >= 3
	})
	if strings.Contains(b.logs.String(), "s3cr3t-path") {
		t.Error("the webhook URL reached the logs")
	}
}

// fetchStatusOpen reads /status from a ballast without admin.token.
func fetchStatusOpen(t *testing.T, b *ballast) (supervise.Snapshot, string) {
	t.Helper()
	resp, body := get(t, client(t), b.admin+"/status")
	if resp.StatusCode != 200 {
		t.Fatalf("/status: %d %s", resp.StatusCode, body)
	}
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	return snap, body
}
