package supervise

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// End to end through a real Webhook: the POST carries the documented
// fields as application/json, the URL's token appears in no payload, log
// line or /status counter, a failed delivery (non-2xx) is counted and not
// retried, and the next event of the same key inside the dedup window is
// suppressed and carried by the one after the window.
func TestWebhookPayloadAndFailurePolicy(t *testing.T) {
	const secret = "T0K3N-in-the-path"
	var mu sync.Mutex
	var bodies []map[string]any
	var types []string
	got := make(chan struct{}, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		mu.Lock()
		bodies = append(bodies, m)
		types = append(types, r.Header.Get("Content-Type"))
		mu.Unlock()
		w.WriteHeader(http.StatusInternalServerError) // every delivery fails
		got <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	hook, err := NewWebhook(srv.URL + "/hooks/" + secret + "?token=" + secret)
	if err != nil {
		t.Fatal(err)
	}
	n, clock, logs := newTestNotifier(t, hook, NotifierConfig{DedupWindow: 10 * time.Minute, MaxPerMinute: 10})
	n.Start()
	ev := Event{Kind: KindCooldown, Route: "openai", Upstream: "api.openai.com", Detail: "the upstream asked to pause for 2m0s"}
	if !n.Notify(ev) {
		t.Fatal("first event refused")
	}
	waitDelivery(t, got)
	clock.Advance(time.Minute)
	if n.Notify(ev) {
		t.Fatal("a duplicate inside the window was queued")
	}
	clock.Advance(10 * time.Minute)
	if !n.Notify(ev) {
		t.Fatal("the event after the window was refused")
	}
	waitDelivery(t, got)
	closeNow(t, n)

	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 {
		t.Fatalf("the webhook got %d POSTs, want 2 (a failed delivery is not retried)", len(bodies))
	}
	for i, b := range bodies {
		if types[i] != "application/json" {
			t.Errorf("POST %d Content-Type %q", i, types[i])
		}
		for _, k := range []string{"source", "kind", "route", "upstream", "time", "detail", "suppressed", "text"} {
			if _, ok := b[k]; !ok {
				t.Errorf("POST %d lacks %q: %v", i, k, b)
			}
		}
		if b["source"] != "ballast" || b["kind"] != "cooldown" {
			t.Errorf("POST %d: %v", i, b)
		}
	}
	if bodies[0]["suppressed"] != float64(0) || bodies[1]["suppressed"] != float64(1) {
		t.Errorf("suppressed %v then %v, want 0 then 1", bodies[0]["suppressed"], bodies[1]["suppressed"])
	}
	if txt, _ := bodies[1]["text"].(string); !strings.HasPrefix(txt, "ballast: upstream cooling down on route openai (upstream api.openai.com)") ||
		!strings.HasSuffix(txt, "[+1 similar suppressed]") {
		t.Errorf("text %q", txt)
	}
	st := n.Stats()
	if st.Failed != 2 || st.Sent != 0 || st.Suppressed != 1 {
		t.Errorf("stats %+v, want 2 failed, 0 sent, 1 suppressed", st)
	}
	all, _ := json.Marshal(bodies)
	if strings.Contains(string(all), secret) || strings.Contains(logs.String(), secret) {
		t.Errorf("the webhook URL leaked: payloads %s\nlogs %s", all, logs.String())
	}
	if !strings.Contains(logs.String(), "webhook answered 500") {
		t.Errorf("the failure is not logged with its status: %s", logs.String())
	}
}

func waitDelivery(t *testing.T, got chan struct{}) {
	t.Helper()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery within 5s")
	}
}
