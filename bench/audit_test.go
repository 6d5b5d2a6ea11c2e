package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// The standard profile's shares, as bench/README.md states them (503 10%,
// 429 10%, malformed 5%, reset 5%, hang 2%, 32% failing in all), hold over
// many keyed operations, and a request's fate is a pure function of the
// seed, its key and its ordinal.
func TestStandardProfileShares(t *testing.T) {
	p, err := NamedProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	const n = 200_000
	counts := map[fault]int{}
	for i := range n {
		key := []byte(fmt.Sprintf("op-%d", i))
		d := newDraw(7, key, 0)
		f := p.pick(d.float()*100, false)
		counts[f]++
		again := newDraw(7, key, 0)
		if p.pick(again.float()*100, false) != f {
			t.Fatalf("key %s: the fault is not deterministic", key)
		}
	}
	want := map[fault]float64{fault503: 10, fault429: 10, faultMalformed: 5, faultReset: 5, faultHang: 2, fault500: 0, faultCut: 0, faultNone: 68}
	for f, pct := range want {
		got := 100 * float64(counts[f]) / n
		if math.Abs(got-pct) > 0.4 {
			t.Errorf("%s: %.2f%% of requests, want %.0f%%", f, got, pct)
		}
	}
	// Cut applies to streams only: a non-stream request in the cut band
	// is answered normally, a stream request is cut.
	cut := Profile{CutStream: 100}
	if cut.pick(50, false) != faultNone || cut.pick(50, true) != faultCut {
		t.Error("cut must apply to streams only")
	}
}

// GET /_bench/counters' "requests" counts every request since the last
// reset (Counters.Requests' contract, and bench/README.md's
// {"requests": N, ...}), the fast path's too: a none-profile upstream
// reports each request it answered, as a "none" fault.
func TestCountersCountEveryRequest(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{})
	c := testClient(t, addr)
	for range 3 {
		resp, err := call(t, c, "GET", addr, "/v1/items/42", "", time.Second)
		if err != nil || resp.StatusCode() != 200 {
			t.Fatalf("GET: %v", err)
		}
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != 3 || got.Faults["none"] != 3 {
		t.Errorf("counters after 3 unkeyed requests: requests=%d faults=%v, want requests=3 and none=3", got.Requests, got.Faults)
	}
}

// A real wrk 4 report with socket errors and non-2xx answers (wrk -t1 -c8
// -d2s --latency --timeout 1s against `ballast bench upstream --profile
// standard`) parses into the documented figures.
func TestParseWrkReportWithErrors(t *testing.T) {
	const out = `Running 2s test @ http://127.0.0.1:39111/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    72.00us   48.00us 277.00us   76.80%
    Req/Sec     1.94k     0.00     1.94k   100.00%
  Latency Distribution
     50%   62.00us
     75%   90.00us
     90%  126.00us
     99%  264.00us
  194 requests in 2.00s, 177.99KB read
  Socket errors: connect 0, read 6, write 0, timeout 0
  Non-2xx or 3xx responses: 45
Requests/sec:     96.83
Transfer/sec:     88.84KB
`
	res, err := parseWrk([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	a := res.All
	if a.Requests != 200 || a.OK != 149 || a.Errors["status"] != 45 || a.Errors["transport"] != 6 || a.Errors["timeout"] != 0 {
		t.Errorf("all %+v, want 200 requests (194 answers + 6 socket errors), 149 ok, 45 status, 6 transport", a)
	}
	if math.Abs(res.RPS-97) > 0.01 || res.Elapsed != 2*time.Second {
		t.Errorf("rps %v elapsed %v, want 97 over 2s", res.RPS, res.Elapsed)
	}
	l := a.Latency
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if !near(l.P50, 0.062) || !near(l.P90, 0.126) || !near(l.P99, 0.264) || !near(l.Mean, 0.072) || !near(l.Max, 0.277) || l.P999 != 0 {
		t.Errorf("latency %+v", l)
	}
	if b, err := json.Marshal(res); err != nil || !json.Valid(b) || strings.Contains(string(b), "NaN") {
		t.Errorf("the result is not valid JSON: %v %s", err, b)
	}
}

// POST /_bench/reset restarts the arrival numbering of requests without a
// key, so a second keyless run after a reset draws the same faults, in the
// same order, as the first.
func TestResetRestartsKeylessArrivals(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{Profile: Profile{Error503: 50}, Seed: 7})
	c := testClient(t, addr)
	statuses := func() []int {
		var s []int
		for range 32 {
			resp, err := call(t, c, "GET", addr, "/v1/items/42", "", time.Second)
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			s = append(s, resp.StatusCode())
		}
		return s
	}
	first := statuses()
	if !slices.Contains(first, 200) || !slices.Contains(first, 503) {
		t.Fatalf("first run %v: want both 200s and 503s for the comparison to mean anything", first)
	}
	if err := ResetCounters(c, addr); err != nil {
		t.Fatal(err)
	}
	if second := statuses(); !slices.Equal(first, second) {
		t.Errorf("after a reset the keyless faults differ:\nfirst  %v\nsecond %v", first, second)
	}
	got, err := FetchCounters(c, addr)
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != 32 || got.Faults["none"]+got.Faults["503"] != 32 {
		t.Errorf("counters after the second run: %+v, want 32 requests", got)
	}
}
