package bench

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wrkOutputs are real reports of wrk 4.1.0 (`wrk -t1 -c<N> -d<T> --latency
// --timeout <T>`) against `ballast bench upstream` on loopback.
var wrkOutputs = []string{"get.txt", "post.txt", "faults.txt", "hangs.txt", "slow.txt", "all-reset.txt"}

func readWrkOutput(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "wrk", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseWrkRealOutputs(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		elapsed time.Duration
		reqs    int64
		ok      int64
		errors  map[string]int64
		latency Percentiles
	}{
		{name: "GET, no errors", file: "get.txt", elapsed: time.Second, reqs: 109686, ok: 109686,
			errors:  map[string]int64{},
			latency: Percentiles{P50: 0.342, P90: 0.638, P99: 3.75, Mean: 0.45614, Max: 8.97}},
		{name: "POST from a Lua script", file: "post.txt", elapsed: time.Second, reqs: 117444, ok: 117444,
			errors:  map[string]int64{},
			latency: Percentiles{P50: 0.324, P90: 0.747, P99: 4.72, Mean: 0.56355, Max: 13.48}},
		{name: "500s and resets: non-2xx and read errors", file: "faults.txt", elapsed: 3010 * time.Millisecond,
			reqs: 1468 + 84, ok: 1468 - 306,
			errors:  map[string]int64{"status": 306, "transport": 84},
			latency: Percentiles{P50: 0.057, P90: 0.130, P99: 0.330, Mean: 0.07445, Max: 2.69}},
		{name: "hanging answers are not counted by wrk", file: "hangs.txt", elapsed: 4010 * time.Millisecond,
			reqs: 524 + 19, ok: 524 - 159,
			errors:  map[string]int64{"status": 159, "transport": 19},
			latency: Percentiles{P50: 0.027, P90: 0.075, P99: 0.160, Mean: 0.03811, Max: 0.231}},
		{name: "answers slower than --timeout: timeouts overlap statuses, OK stays at 0", file: "slow.txt", elapsed: 3 * time.Second,
			reqs: 6 + 2, ok: 0,
			errors: map[string]int64{"status": 1, "transport": 2, "timeout": 6}},
		{name: "every connection reset: zero requests", file: "all-reset.txt", elapsed: 1100 * time.Millisecond,
			reqs: 17942, ok: 0,
			errors: map[string]int64{"transport": 17942}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := parseWrk(readWrkOutput(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			a := res.All
			if res.Mode != "closed" || res.Elapsed != tt.elapsed || a.Requests != tt.reqs || a.OK != tt.ok {
				t.Errorf("mode %q, elapsed %v, requests %d, ok %d; want closed, %v, %d, %d",
					res.Mode, res.Elapsed, a.Requests, a.OK, tt.elapsed, tt.reqs, tt.ok)
			}
			if want := float64(tt.reqs-tt.errors["transport"]) / tt.elapsed.Seconds(); math.Abs(res.RPS-want) > 1e-6*want {
				t.Errorf("rps %v, want %v", res.RPS, want)
			}
			if len(a.Errors) != len(tt.errors) { // zero classes are left out
				t.Errorf("errors %v, want %v", a.Errors, tt.errors)
			}
			for k, v := range tt.errors {
				if a.Errors[k] != v {
					t.Errorf("errors %v, want %v", a.Errors, tt.errors)
				}
			}
			if !closePercentiles(a.Latency, tt.latency) {
				t.Errorf("latency %+v, want %+v", a.Latency, tt.latency)
			}
		})
	}
}

// closePercentiles compares within float rounding.
func closePercentiles(a, b Percentiles) bool {
	av := []float64{a.P50, a.P90, a.P99, a.P999, a.Max, a.Mean}
	bv := []float64{b.P50, b.P90, b.P99, b.P999, b.Max, b.Mean}
	for i := range av {
		if math.Abs(av[i]-bv[i]) > 1e-9 {
			return false
		}
	}
	return true
}

func TestParseWrkUnits(t *testing.T) {
	get := string(readWrkOutput(t, "get.txt"))
	tests := []struct {
		name    string
		from    string
		to      string
		elapsed time.Duration
		check   func(Percentiles) bool
	}{
		{name: "run in minutes", from: "in 1.00s,", to: "in 1.50m,", elapsed: 90 * time.Second,
			check: func(Percentiles) bool { return true }},
		{name: "run cut short, in milliseconds", from: "in 1.00s,", to: "in 250.00ms,", elapsed: 250 * time.Millisecond,
			check: func(Percentiles) bool { return true }},
		{name: "p99 in seconds", from: "99%    3.75ms", to: "99%    1.25s", elapsed: time.Second,
			check: func(l Percentiles) bool { return l.P99 == 1250 }},
		{name: "max in hours", from: "8.97ms", to: "1.00h", elapsed: time.Second,
			check: func(l Percentiles) bool { return l.Max == 3_600_000 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := strings.Replace(get, tt.from, tt.to, 1)
			if out == get {
				t.Fatalf("%q not in the sample", tt.from)
			}
			res, err := parseWrk([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			if res.Elapsed != tt.elapsed || !tt.check(res.All.Latency) {
				t.Errorf("elapsed %v, latency %+v", res.Elapsed, res.All.Latency)
			}
		})
	}
}

func TestParseWrkRejectsMalformedOutput(t *testing.T) {
	get := string(readWrkOutput(t, "faults.txt"))
	tests := []struct {
		name string
		out  string
		want string // in the error
	}{
		{name: "empty", out: "", want: `no "N requests in T" line`},
		{name: "usage text", out: "Usage: wrk <options> <url>\n  Options:\n", want: `no "N requests in T" line`},
		{name: "no Requests/sec", out: cut(get, "Requests/sec:"), want: `no "Requests/sec:" line`},
		{name: "no latency line", out: cut(get, "    Latency    74"), want: `no "Latency" thread-stats line`},
		{name: "without --latency", out: cut(cut(cut(cut(cut(get, "  Latency Distribution"), "     50%"), "     75%"), "     90%"), "     99%"),
			want: `no "Latency Distribution" block`},
		{name: "no p90", out: cut(get, "     90%"), want: "no 90% line"},
		{name: "unknown unit", out: strings.Replace(get, "57.00us", "57.00ns", 1), want: `unknown unit "ns"`},
		{name: "time without unit", out: strings.Replace(get, "57.00us", "57.00", 1), want: "want a number and a unit"},
		{name: "nan latency", out: strings.Replace(get, "74.45us", "-nanus", 1), want: "latency avg"},
		{name: "short latency line", out: strings.Replace(get, "  114.95us   2.69ms   97.41%", "", 1), want: "want avg, stdev and max"},
		{name: "requests not a number", out: strings.Replace(get, "1468 requests", "x requests", 1), want: `"x" is not a count`},
		{name: "negative requests", out: strings.Replace(get, "1468 requests", "-1 requests", 1), want: `"-1" is not a count`},
		{name: "huge requests", out: strings.Replace(get, "1468 requests", "99999999999999999999 requests", 1), want: "is not a count"},
		{name: "zero-length run", out: strings.Replace(get, "in 3.01s", "in 0.00us", 1), want: "took no time"},
		{name: "run over a century", out: strings.Replace(get, "in 3.01s", "in 999999999.00h", 1), want: "over a century"},
		{name: "exponent", out: strings.Replace(get, "in 3.01s", "in 1E3s", 1), want: "not a non-negative decimal"},
		{name: "socket errors missing a field", out: strings.Replace(get, ", timeout 0", "", 1), want: "want connect, read, write and timeout"},
		{name: "socket errors out of order", out: strings.Replace(get, "connect 0, read 84", "read 84, connect 0", 1), want: `want "connect"`},
		{name: "repeated line", out: get + "  5 requests in 1.00s, 1KB read\n", want: "seen twice"},
		{name: "repeated percentile", out: strings.Replace(get, "     75%", "     50%", 1), want: "seen twice"},
		{name: "bad status count", out: strings.Replace(get, "responses: 306", "responses: many", 1), want: `"many" is not a count`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseWrk([]byte(tt.out))
			if !errors.Is(err, ErrWrkOutput) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrWrkOutput with %q", err, tt.want)
			}
		})
	}
}

// cut drops the line starting with prefix; the test fails on a missing
// prefix through the unchanged output's expectations.
func cut(out, prefix string) string {
	var kept []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, prefix) {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}

func FuzzParseWrk(f *testing.F) {
	for _, name := range wrkOutputs {
		f.Add(readWrkOutput(f, name))
	}
	f.Add([]byte("  Latency Distribution\n 50% 1us\n"))
	f.Add([]byte("  1 requests in 1.00s, 1B read\nRequests/sec: 1\n    Latency 1us 1us 1us 1%\n  Latency Distribution\n 50% 1us\n 90% 1ms\n 99% 1s\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		res, err := parseWrk(out)
		if err != nil {
			if !errors.Is(err, ErrWrkOutput) {
				t.Fatalf("error %v does not wrap ErrWrkOutput", err)
			}
			return
		}
		a := res.All
		if res.Elapsed <= 0 || a.OK < 0 || a.OK > a.Requests || res.RPS < 0 || math.IsInf(res.RPS, 0) || math.IsNaN(res.RPS) {
			t.Fatalf("implausible result %+v", res)
		}
	})
}
