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

// One breaker opening raises one breaker_open alert. Routes that share an
// upstream (and the default breaker settings) share its breaker; a route
// that later meets the open breaker, without having sent a request, raises
// none, so one outage of a provider behind N routes spends one of the
// max_per_minute alerts, not N.
func TestSharedBreakerOpeningAlertsOnce(t *testing.T) {
	events := make(chan supervise.Event, 32)
	hook, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err == nil {
			events <- e
		}
	})
	limited, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
	})
	dead := deadAddr(t)
	b := startBallast(t, fmt.Sprintf(`
notify: {webhook: "${HOOK}", cooldown_threshold: 30s, max_per_minute: 100}
defaults: {retry: {attempts: 1}, breaker: {failures: 1, open_for: 1m}}
routes:
  - {name: chat, match: {path_prefix: /chat/}, upstream: "http://%[1]s"}
  - {name: embed, match: {path_prefix: /embed/}, upstream: "http://%[1]s"}
  - {name: files, match: {path_prefix: /files/}, upstream: "http://%[1]s"}
  - {name: sentinel, match: {path_prefix: /sentinel/}, upstream: %[2]q, timeouts: {total: 5s}}
`, dead, limited), "HOOK="+hook+"/h")
	c := client(t)
	for _, p := range []string{"/chat/x", "/embed/x", "/files/x"} {
		get(t, c, b.base+p)
	}
	// The sentinel's cool-down alert is queued after every alert the three
	// requests raised; one sender delivers in order.
	get(t, c, b.base+"/sentinel/x")
	var breaker []string
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case e := <-events:
			switch e.Kind {
			case supervise.KindBreakerOpen:
				breaker = append(breaker, e.Route)
			case supervise.KindCooldown:
				done = true
			}
		case <-timeout:
			t.Fatalf("no sentinel alert within 10s; breaker alerts so far %v", breaker)
		}
	}
	if len(breaker) != 1 || breaker[0] != "chat" {
		t.Errorf("breaker_open alerts for routes %v, want one, for chat (the only route whose requests reached the upstream)", breaker)
	}
	if strings.Contains(b.logs.String(), hook+"/h") {
		t.Error("the webhook URL reached the logs")
	}
}
