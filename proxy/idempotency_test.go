package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// sideEffects is an upstream that counts the calls it executes, per key.
type sideEffects struct {
	calls atomic.Int64
	delay time.Duration
}

func (s *sideEffects) handler(w http.ResponseWriter, r *http.Request) {
	n := s.calls.Add(1)
	time.Sleep(s.delay) // the tool's own running time, not a wait for behaviour
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"charge":%d,"echo":%q}`, n, body)
}

func idemRoute(up, extra string) string {
	return fmt.Sprintf(`
routes:
  - name: pay
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header%s}
`, up, extra)
}

func TestConcurrentKeyedPOSTsRunOnce(t *testing.T) {
	se := &sideEffects{delay: 200 * time.Millisecond}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, idemRoute(up, ""))
	answers := make([]<-chan raResult, 50)
	for i := range answers {
		answers[i] = raSend(t, "POST", b.base+"/charge", `{"amount":5}`, "Idempotency-Key", "order-42", "Authorization", "Bearer alice")
	}
	first, replayed := "", 0
	for _, ch := range answers {
		r := raAnswer(t, ch)
		if r.resp.Header.Get("Idempotent-Replayed") == "true" {
			replayed++
		}
		got := fmt.Sprint(r.resp.StatusCode, r.body)
		if first == "" {
			first = got
		}
		if got != first {
			t.Errorf("agents got different answers: %q and %q", first, got)
		}
	}
	if !strings.HasPrefix(first, `200{"charge":1`) {
		t.Errorf("answer %q", first)
	}
	if se.calls.Load() != 1 {
		t.Errorf("the upstream executed %d charges for 50 identical keyed POSTs, want 1", se.calls.Load())
	}
	if replayed != 49 {
		t.Errorf("%d answers were marked Idempotent-Replayed, want 49", replayed)
	}
	claimed := b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "claimed"})
	if claimed != 1 {
		t.Errorf("claims counted %v", claimed)
	}
}

func TestAgentTimeoutThenRetryAttaches(t *testing.T) {
	se := &sideEffects{delay: 3 * time.Second}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, idemRoute(up, ""))
	impatient := &http.Client{Timeout: time.Second, Transport: &http.Transport{}}
	t.Cleanup(impatient.CloseIdleConnections)
	req, _ := http.NewRequest("POST", b.base+"/deploy", strings.NewReader(`{"v":7}`))
	req.Header.Set("Idempotency-Key", "deploy-7")
	if _, err := impatient.Do(req); err == nil {
		t.Fatal("the agent's client was meant to time out after 1s")
	}
	// The agent re-sends; the first call is still running upstream.
	resp, body := do(t, "POST", b.base+"/deploy", `{"v":7}`, "Idempotency-Key", "deploy-7")
	if resp.StatusCode != 200 || !strings.Contains(body, `"charge":1`) {
		t.Fatalf("the retry got %d %q, want the first call's result", resp.StatusCode, body)
	}
	if se.calls.Load() != 1 {
		t.Errorf("the upstream ran %d times", se.calls.Load())
	}
	// Later duplicates replay the stored answer.
	resp, body = do(t, "POST", b.base+"/deploy", `{"v":7}`, "Idempotency-Key", "deploy-7")
	if resp.Header.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"charge":1`) || se.calls.Load() != 1 {
		t.Errorf("replay: %q %q calls %d", resp.Header.Get("Idempotent-Replayed"), body, se.calls.Load())
	}
}

func TestIdempotencyMismatchAndTenants(t *testing.T) {
	se := &sideEffects{}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, idemRoute(up, ""))
	do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", "k1", "Authorization", "Bearer alice")
	resp, body := do(t, "POST", b.base+"/x", `{"a":2}`, "Idempotency-Key", "k1", "Authorization", "Bearer alice")
	if resp.StatusCode != 422 || decodeProblem(t, resp, body).Reason != "idempotency_mismatch" {
		t.Errorf("same key, other body: %d %s", resp.StatusCode, body)
	}
	// JSON key order does not make a different request.
	resp, _ = do(t, "POST", b.base+"/x", `{ "a" : 1 }`, "Idempotency-Key", "k1", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("canonically equal body: %d replayed %q", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"))
	}
	// Another tenant's same key is another record: never a replay across tenants.
	resp, body = do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", "k1", "Authorization", "Bearer bob")
	if resp.Header.Get("Idempotent-Replayed") == "true" || se.calls.Load() != 2 {
		t.Errorf("bob replayed alice's answer: %q calls %d", body, se.calls.Load())
	}
}

func TestServerErrorsAreNotStoredByDefault(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(500)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, idemRoute(up, ""))
	if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k"); resp.StatusCode != 500 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k")
	if resp.StatusCode != 200 || body != "ok" || s.hits.Load() != 2 {
		t.Errorf("after a 500 the key must be free to try again: %d %q hits %d", resp.StatusCode, body, s.hits.Load())
	}
}

// A relayed 429 is "not now", not the call's outcome: it frees the key,
// so the retry the agent makes after Retry-After runs.
func TestTooManyRequestsIsNotStored(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, idemRoute(up, ", store_server_errors: true")+"    retry: {attempts: 1}\n")
	if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k"); resp.StatusCode != 429 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k")
	if resp.StatusCode != 200 || body != "ok" || s.hits.Load() != 2 {
		t.Errorf("after a 429 the key must be free to try again: %d %q hits %d", resp.StatusCode, body, s.hits.Load())
	}
}

func TestIdempotencyRecordExpires(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	se := &sideEffects{}
	up, _ := upstream(t, se.handler)
	b := startBallastClock(t, clock, idemRoute(up, ", ttl: 1h"))
	do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k")
	clock.Advance(59 * time.Minute)
	if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k"); resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Error("replay within the ttl failed")
	}
	clock.Advance(2 * time.Minute)
	if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k"); resp.Header.Get("Idempotent-Replayed") == "true" || se.calls.Load() != 2 {
		t.Errorf("after the ttl the key must run again (calls %d)", se.calls.Load())
	}
}

func TestAutoModeRecognisesARepeatWithoutAKey(t *testing.T) {
	se := &sideEffects{}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: tool, match: {path_prefix: /}, upstream: %q, idempotency: {mode: auto, window: 1m}}
`, up))
	do(t, "POST", b.base+"/tickets", `{"title":"disk full"}`)
	resp, _ := do(t, "POST", b.base+"/tickets", `{"title":"disk full"}`)
	if resp.Header.Get("Idempotent-Replayed") != "true" || se.calls.Load() != 1 {
		t.Errorf("a re-sent tool call ran again (calls %d)", se.calls.Load())
	}
	do(t, "POST", b.base+"/tickets", `{"title":"cpu hot"}`)
	if se.calls.Load() != 2 {
		t.Errorf("a different call was treated as a repeat (calls %d)", se.calls.Load())
	}
}

func TestOnConflictReject(t *testing.T) {
	se := &sideEffects{delay: 500 * time.Millisecond}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, idemRoute(up, ", on_conflict: reject"))
	done := raSend(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k")
	waitFor(t, func() bool { return se.calls.Load() == 1 })
	resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k")
	if resp.StatusCode != 409 || decodeProblem(t, resp, body).Reason != "in_progress" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("duplicate while running: %d %s", resp.StatusCode, body)
	}
	raAnswer(t, done)
}

func TestAsyncJob(t *testing.T) {
	se := &sideEffects{delay: 300 * time.Millisecond}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, up))
	resp, body := do(t, "POST", b.base+"/report", `{"q":1}`, "Prefer", "respond-async", "Authorization", "Bearer alice")
	if resp.StatusCode != 202 || resp.Header.Get("Preference-Applied") != "respond-async" {
		t.Fatalf("%d %q %s", resp.StatusCode, resp.Header.Get("Preference-Applied"), body)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "/_ballast/jobs/") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("Location %q", loc)
	}
	// Another identity cannot see the job.
	if resp, _ := do(t, "GET", b.base+loc, "", "Authorization", "Bearer mallory"); resp.StatusCode != 404 {
		t.Errorf("another caller saw the job: %d", resp.StatusCode)
	}
	resp, body = do(t, "GET", b.base+loc, "", "Authorization", "Bearer alice", "Prefer", "wait=5")
	if resp.StatusCode != 200 || !strings.Contains(body, `"charge":1`) || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("finished job: %d %q %s", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if resp.Header.Get("Preference-Applied") != "wait=5" {
		t.Errorf("Preference-Applied %q", resp.Header.Get("Preference-Applied"))
	}
	if se.calls.Load() != 1 {
		t.Errorf("calls %d", se.calls.Load())
	}
	if got := b.metric("ballast_jobs", map[string]string{"state": "succeeded"}); got != 1 {
		t.Errorf("ballast_jobs{state=succeeded} = %v", got)
	}
	r, status := get(t, client(t), b.admin+"/status")
	if r.StatusCode != 200 || !strings.Contains(status, `"jobs"`) {
		t.Errorf("/status has no jobs section: %d %s", r.StatusCode, status)
	}
}

// A keyed answer that the transport would stream (chunked, or over 64KiB)
// is read whole up to state.max_response_bytes and stored, so the call
// runs once; one the upstream breaks off is not passed as whole: 502, and
// since the call ran, the retry reads outcome_unknown rather than running
// it again.
func TestKeyedStreamedAnswersRunOnce(t *testing.T) {
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, `{"part":%d}`, i)
				w.(http.Flusher).Flush()
			}
		case "/cut":
			if n == 2 { // the first call with this key breaks off mid-stream
				_, _ = io.WriteString(w, `{"partial":`)
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}
			_, _ = io.WriteString(w, `{"whole":true}`)
		}
	})
	b := startBallast(t, idemRoute(u, "")+"    retry: {attempts: 1}\n")
	want := `{"part":0}{"part":1}{"part":2}`
	for i := range 2 {
		resp, body := do(t, "POST", b.base+"/chunked", `{"a":1}`, "Idempotency-Key", "chunked-1")
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("call %d: %d %q", i+1, resp.StatusCode, body)
		}
		if i == 1 && resp.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("the chunked answer was not replayed")
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("a keyed POST with a chunked answer ran %d times", calls.Load())
	}
	resp, body := do(t, "POST", b.base+"/cut", `{"a":1}`, "Idempotency-Key", "cut-1")
	if resp.StatusCode != 502 || !strings.Contains(body, "broke off") {
		t.Fatalf("a broken-off answer: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", b.base+"/cut", `{"a":1}`, "Idempotency-Key", "cut-1")
	if resp.StatusCode != 409 || !strings.Contains(body, "outcome_unknown") || calls.Load() != 2 {
		t.Errorf("the retry after a broken-off answer: %d %q after %d calls", resp.StatusCode, body, calls.Load())
	}
}
