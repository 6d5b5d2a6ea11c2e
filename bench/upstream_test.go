package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestUpstreamAnswersValidJSONOfTheRequestedSize(t *testing.T) {
	for _, size := range []int{1, 1024, 4096} {
		_, addr := serve(t, UpstreamConfig{Size: size})
		resp, err := call(t, testClient(t, addr), "GET", addr, "/v1/x", "", time.Second)
		if err != nil || resp.StatusCode() != 200 {
			t.Fatalf("size %d: %v", size, err)
		}
		body := resp.Body()
		if !json.Valid(body) || (size >= 200 && len(body) != size) {
			t.Errorf("size %d: got %d bytes, valid JSON %v", size, len(body), json.Valid(body))
		}
	}
}

func TestUpstreamFaults(t *testing.T) {
	cases := []struct {
		name    string
		profile Profile
		path    string
		body    string
		check   func(t *testing.T, resp *fasthttp.Response, err error)
	}{
		{name: "500", profile: Profile{Error500: 100}, check: wantStatus(500)},
		{name: "503", profile: Profile{Error503: 100}, check: wantStatus(503)},
		{name: "429 carries every provider's reset hint", profile: Profile{RateLimited: 100, RetryAfter: 1500 * time.Millisecond},
			check: func(t *testing.T, resp *fasthttp.Response, err error) {
				wantStatus(429)(t, resp, err)
				for h, want := range map[string]string{"Retry-After": "2", "retry-after-ms": "1500",
					"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "1.5s"} {
					if got := string(resp.Header.Peek(h)); got != want {
						t.Errorf("%s = %q, want %q", h, got, want)
					}
				}
				reset, perr := time.Parse(time.RFC3339, string(resp.Header.Peek("anthropic-ratelimit-requests-reset")))
				if perr != nil || time.Until(reset) > 3*time.Second {
					t.Errorf("anthropic reset %q: %v", resp.Header.Peek("anthropic-ratelimit-requests-reset"), perr)
				}
			}},
		{name: "malformed JSON", profile: Profile{Malformed: 100}, check: func(t *testing.T, resp *fasthttp.Response, err error) {
			wantStatus(200)(t, resp, err)
			if json.Valid(resp.Body()) {
				t.Errorf("body is valid JSON: %s", resp.Body())
			}
		}},
		{name: "reset", profile: Profile{Reset: 100}, check: wantTransportError},
		{name: "hang outlasts the client", profile: Profile{Hang: 100}, check: func(t *testing.T, _ *fasthttp.Response, err error) {
			if !errors.Is(err, fasthttp.ErrTimeout) {
				t.Errorf("err = %v, want a timeout", err)
			}
		}},
		{name: "fixed latency", profile: Profile{LatencyFixed: 30 * time.Millisecond}, check: wantStatus(200)},
		{name: "SSE on /v1/stream", path: "/v1/stream", check: wantStream(true)},
		{name: `SSE on "stream": true`, path: "/v1/chat/completions", body: `{"model":"m","stream": true}`, check: wantStream(true)},
		{name: "cut stream", profile: Profile{CutStream: 100}, path: "/v1/stream", check: wantTransportError},
		{name: "cut applies to streams only", profile: Profile{CutStream: 100}, check: wantStatus(200)},
		{name: "malformed stream event", profile: Profile{Malformed: 100}, path: "/v1/stream", check: wantStream(false)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, addr := serve(t, UpstreamConfig{Profile: c.profile, StreamEvents: 4})
			path := c.path
			if path == "" {
				path = "/v1/items/1"
			}
			start := time.Now()
			resp, err := call(t, testClient(t, addr), "POST", addr, path, c.body, 300*time.Millisecond)
			c.check(t, resp, err)
			if d := time.Since(start); c.profile.LatencyFixed > 0 && d < c.profile.LatencyFixed {
				t.Errorf("answered after %v, before the fixed latency %v", d, c.profile.LatencyFixed)
			}
		})
	}
}

func wantStatus(code int) func(*testing.T, *fasthttp.Response, error) {
	return func(t *testing.T, resp *fasthttp.Response, err error) {
		t.Helper()
		if err != nil || resp.StatusCode() != code {
			t.Fatalf("got %d %v, want %d", resp.StatusCode(), err, code)
		}
		if code != 200 && !json.Valid(resp.Body()) {
			t.Errorf("error body is not JSON: %s", resp.Body())
		}
	}
}

func wantTransportError(t *testing.T, resp *fasthttp.Response, err error) {
	t.Helper()
	if err == nil || errors.Is(err, fasthttp.ErrTimeout) {
		t.Fatalf("got %d %v, want a connection error", resp.StatusCode(), err)
	}
}

func wantStream(valid bool) func(*testing.T, *fasthttp.Response, error) {
	return func(t *testing.T, resp *fasthttp.Response, err error) {
		t.Helper()
		wantStatus(200)(t, resp, err)
		if ct := string(resp.Header.ContentType()); ct != "text/event-stream" {
			t.Errorf("content type %q", ct)
		}
		body := string(resp.Body())
		if !strings.HasSuffix(body, "data: [DONE]\n\n") {
			t.Errorf("stream does not end with [DONE]: %q", body)
		}
		events := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
		if len(events) != 5 {
			t.Errorf("%d events, want 4 + [DONE]", len(events))
		}
		allValid := true
		for _, e := range events[:len(events)-1] {
			allValid = allValid && json.Valid([]byte(strings.TrimPrefix(e, "data: ")))
		}
		if allValid != valid {
			t.Errorf("events valid JSON = %v, want %v:\n%s", allValid, valid, body)
		}
	}
}

// faultsFor sends n requests keyed "op-i" and returns the status (or -1 for
// errors) of each.
func faultsFor(t *testing.T, seed int64, order []int) map[int]int {
	_, addr := serve(t, UpstreamConfig{Seed: seed, Profile: Profile{Error503: 30, Error500: 30}})
	c := testClient(t, addr)
	got := map[int]int{}
	for _, i := range order {
		resp, err := call(t, c, "GET", addr, "/v1/items", "", time.Second, "X-Bench-Op", fmt.Sprintf("op-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		got[i] = resp.StatusCode()
	}
	return got
}

func TestUpstreamFaultsAreDeterministicPerKeyWhateverTheOrder(t *testing.T) {
	forward := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	backward := []int{15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0}
	a, b := faultsFor(t, 7, forward), faultsFor(t, 7, backward)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("same seed, different order, different faults:\n%v\n%v", a, b)
	}
	if c := faultsFor(t, 8, forward); fmt.Sprint(a) == fmt.Sprint(c) {
		t.Errorf("seeds 7 and 8 drew the same 16 outcomes: %v", a)
	}
}

func TestUpstreamCountsSideEffectsPerKey(t *testing.T) {
	// 500s do the work; 503s do not. Seed 1 with 50/50 gives both over a
	// few attempts of one key.
	_, addr := serve(t, UpstreamConfig{Seed: 1, Profile: Profile{Error500: 50, Error503: 50}})
	c := testClient(t, addr)
	var effects int64
	for range 6 {
		resp, err := call(t, c, "POST", addr, "/v1/orders", `{}`, time.Second, "Idempotency-Key", "order-1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode() == 500 {
			effects++
		}
	}
	if _, err := call(t, c, "GET", addr, "/v1/items", "", time.Second, "X-Bench-Op", "get-1"); err != nil {
		t.Fatal(err)
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if k := got.Keys["order-1"]; k.Arrivals != 6 || k.Effects != effects {
		t.Errorf("order-1: %+v, want 6 arrivals and %d effects", k, effects)
	}
	if got.Requests != 7 || got.Faults["500"]+got.Faults["503"] != 7 {
		t.Errorf("requests %d faults %v", got.Requests, got.Faults)
	}
	if d := got.Duplicates("order-"); d != max(effects-1, 0) {
		t.Errorf("duplicates %d, want %d", d, max(effects-1, 0))
	}
	if err := ResetCounters(c, addr); err != nil {
		t.Fatal(err)
	}
	if got, _ := FetchCounters(c, addr); got.Requests != 0 || len(got.Keys) != 0 {
		t.Errorf("after reset: %+v", got)
	}
}

func TestCountersWithoutFaults(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{})
	c := testClient(t, addr)
	for range 3 {
		if _, err := call(t, c, "POST", addr, "/v1/orders", `{}`, time.Second, "Idempotency-Key", "k"); err != nil {
			t.Fatal(err)
		}
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if k := got.Keys["k"]; k.Arrivals != 3 || k.Effects != 3 || got.Duplicates("") != 2 || got.Faults["none"] != 3 {
		t.Errorf("counters %+v", got)
	}
}

// A cut stream is half a stream: its head and the first half of its
// events reach the client, and then the connection closes without the
// last chunk. (It once closed the connection before fasthttp had written
// anything: an agent saw a reset, never a truncated stream.)
func TestUpstreamCutStreamDeliversHalf(t *testing.T) {
	for _, c := range []struct {
		stamp    bool
		interval time.Duration
	}{{false, 0}, {true, 0}, {false, time.Millisecond}, {true, time.Millisecond}} {
		stamp := c.stamp
		_, addr := serve(t, UpstreamConfig{Profile: Profile{Name: "cut", CutStream: 100}, StreamEvents: 6,
			StreamInterval: c.interval, StreamStamp: stamp})
		for range 20 { // the close raced the write; one try in a few showed it
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(streamRequest(addr, "/v1/stream", nil)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("stamp %v: no answer before the cut: %v", stamp, err)
			}
			body, err := io.ReadAll(resp.Body)
			c.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("stamp %v: %d %q, body ended with %v", stamp, resp.StatusCode, resp.Header.Get("Content-Type"), err)
			}
			if n := bytes.Count(body, []byte("data: {")); n != 3 || bytes.Contains(body, []byte("[DONE]")) {
				t.Fatalf("stamp %v: %d events before the cut, want 3:\n%s", stamp, n, body)
			}
			if stamp != bytes.Contains(body, []byte(`"sent_ns":`)) {
				t.Fatalf("stamp %v: %s", stamp, body)
			}
		}
	}
}
