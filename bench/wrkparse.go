package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrWrkOutput reports wrk output that parseWrk cannot read: a missing,
// repeated or malformed line.
var ErrWrkOutput = errors.New("bench: wrk output")

// maxWrkCount bounds every count read from wrk's output, so that sums of
// counts cannot overflow (wrk keeps its error counters in 32 bits and its
// request count in 64; 2^53 requests is centuries of load).
const maxWrkCount = 1 << 53

// wrkUnits converts wrk's time units (format_time_us and format_time_s in
// wrk's units.c) to milliseconds.
var wrkUnits = map[string]float64{"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

// wrkOutput collects the lines parseWrk needs; nil fields were not seen.
type wrkOutput struct {
	latency     []string // the "Latency" thread-stats line's fields
	percentiles map[string]float64
	requests    *int64
	elapsed     float64 // ms
	socket      []int64 // connect, read, write, timeout
	status      *int64
	rps         *float64
}

// parseWrk reads the report of one `wrk --latency` run (wrk 4.x) into a
// closed-loop LoadResult:
//
//   - Elapsed from "N requests in T"; RPS is N per second of Elapsed
//     (wrk's Requests/sec: answers, whatever their status). All.Requests
//     is N plus the connect, read and write socket errors (attempts that
//     got no answer; wrk retries them at once, so against a dead target
//     they pile up fast and would inflate a rate that counted them).
//   - Errors: "status" from "Non-2xx or 3xx responses" (wrk counts
//     statuses above 399 there), "transport" from connect + read + write,
//     "timeout" from the socket-error timeouts (answers that came later
//     than --timeout: wrk counts them among the N requests, and a request
//     that never answers is not counted at all). A class is present only
//     when its count is above zero, as with RunLoad.
//   - All.OK is N minus the status errors and timeouts, never below zero
//     (wrk's classes may overlap: a slow 500 is both).
//   - Latency P50, P90 and P99 from the "Latency Distribution" block,
//     Mean and Max from the "Latency" thread-stats line, in milliseconds.
//     wrk does not print p99.9: P999 is 0.
//
// Workloads is left empty for the caller, who knows the workload's name.
// Errors wrap ErrWrkOutput and name the offending line.
func parseWrk(out []byte) (LoadResult, error) {
	var w wrkOutput
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	inDist := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		var err error
		inDist, err = w.line(line, inDist)
		if err != nil {
			return LoadResult{}, fmt.Errorf("%w: line %d %q: %w", ErrWrkOutput, n, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return LoadResult{}, fmt.Errorf("%w: %w", ErrWrkOutput, err)
	}
	return w.result()
}

// line reads one trimmed line; inDist says whether the previous line was
// in the "Latency Distribution" block, and line returns the same for this
// one.
func (w *wrkOutput) line(line string, inDist bool) (bool, error) {
	fields := strings.Fields(line)
	switch {
	case line == "Latency Distribution":
		if w.percentiles != nil {
			return false, errRepeated
		}
		w.percentiles = map[string]float64{}
		return true, nil
	case inDist && strings.HasSuffix(firstField(fields), "%"):
		return true, w.percentile(fields)
	case firstField(fields) == "Latency":
		if w.latency != nil {
			return false, errRepeated
		}
		if len(fields) < 4 {
			return false, errors.New("want avg, stdev and max")
		}
		w.latency = fields
	case strings.Contains(line, " requests in "):
		return false, w.requestsLine(fields)
	case strings.HasPrefix(line, "Socket errors:"):
		return false, w.socketErrors(strings.TrimPrefix(line, "Socket errors:"))
	case strings.HasPrefix(line, "Non-2xx or 3xx responses:"):
		return false, setOnce(&w.status, strings.TrimPrefix(line, "Non-2xx or 3xx responses:"))
	case strings.HasPrefix(line, "Requests/sec:"):
		if w.rps != nil {
			return false, errRepeated
		}
		v, err := parseNumber(strings.TrimSpace(strings.TrimPrefix(line, "Requests/sec:")))
		w.rps = &v
		return false, err
	}
	return false, nil
}

var errRepeated = errors.New("seen twice")

func firstField(fields []string) string {
	if len(fields) == 0 {
		return ""
	}
	return fields[0]
}

// percentile reads a distribution line such as "99%    3.75ms".
func (w *wrkOutput) percentile(fields []string) error {
	if len(fields) != 2 {
		return errors.New("want a percentile and a latency")
	}
	p := strings.TrimSuffix(fields[0], "%")
	if _, dup := w.percentiles[p]; dup {
		return errRepeated
	}
	ms, err := parseWrkTime(fields[1])
	if err != nil {
		return err
	}
	w.percentiles[p] = ms
	return nil
}

// requestsLine reads "109686 requests in 1.00s, 118.62MB read".
func (w *wrkOutput) requestsLine(fields []string) error {
	if w.requests != nil {
		return errRepeated
	}
	if len(fields) < 4 || fields[1] != "requests" || fields[2] != "in" {
		return errors.New(`want "N requests in T"`)
	}
	n, err := parseCount(fields[0])
	if err != nil {
		return err
	}
	ms, err := parseWrkTime(strings.TrimSuffix(fields[3], ","))
	if err != nil {
		return err
	}
	if ms <= 0 {
		return errors.New("the run took no time")
	}
	w.requests, w.elapsed = &n, ms
	return nil
}

// socketErrors reads " connect A, read B, write C, timeout D".
func (w *wrkOutput) socketErrors(rest string) error {
	if w.socket != nil {
		return errRepeated
	}
	names := []string{"connect", "read", "write", "timeout"}
	parts := strings.Split(rest, ",")
	if len(parts) != len(names) {
		return errors.New("want connect, read, write and timeout counts")
	}
	w.socket = make([]int64, len(names))
	for i, part := range parts {
		f := strings.Fields(part)
		if len(f) != 2 || f[0] != names[i] {
			return fmt.Errorf("want %q and a count, got %q", names[i], part)
		}
		n, err := parseCount(f[1])
		if err != nil {
			return err
		}
		w.socket[i] = n
	}
	return nil
}

// setOnce parses a count into *dst, which must still be nil.
func setOnce(dst **int64, s string) error {
	if *dst != nil {
		return errRepeated
	}
	n, err := parseCount(strings.TrimSpace(s))
	*dst = &n
	return err
}

// result checks that every needed line was there and builds the result.
func (w *wrkOutput) result() (LoadResult, error) {
	switch {
	case w.requests == nil:
		return LoadResult{}, fmt.Errorf(`%w: no "N requests in T" line`, ErrWrkOutput)
	case w.rps == nil:
		return LoadResult{}, fmt.Errorf(`%w: no "Requests/sec:" line`, ErrWrkOutput)
	case w.latency == nil:
		return LoadResult{}, fmt.Errorf(`%w: no "Latency" thread-stats line`, ErrWrkOutput)
	case w.percentiles == nil:
		return LoadResult{}, fmt.Errorf(`%w: no "Latency Distribution" block (run wrk with --latency)`, ErrWrkOutput)
	}
	var lat Percentiles
	for _, p := range []struct {
		name string
		dst  *float64
	}{{"50", &lat.P50}, {"90", &lat.P90}, {"99", &lat.P99}} {
		v, ok := w.percentiles[p.name]
		if !ok {
			return LoadResult{}, fmt.Errorf("%w: no %s%% line in the latency distribution", ErrWrkOutput, p.name)
		}
		*p.dst = v
	}
	var err error
	if lat.Mean, err = parseWrkTime(w.latency[1]); err != nil {
		return LoadResult{}, fmt.Errorf("%w: latency avg: %w", ErrWrkOutput, err)
	}
	if lat.Max, err = parseWrkTime(w.latency[3]); err != nil {
		return LoadResult{}, fmt.Errorf("%w: latency max: %w", ErrWrkOutput, err)
	}
	return w.load(lat), nil
}

// load assembles the LoadResult from complete, checked output.
func (w *wrkOutput) load(lat Percentiles) LoadResult {
	socket := w.socket
	if socket == nil {
		socket = make([]int64, 4)
	}
	var status int64
	if w.status != nil {
		status = *w.status
	}
	complete := *w.requests
	errs := map[string]int64{}
	for class, n := range map[string]int64{"status": status, "transport": socket[0] + socket[1] + socket[2], "timeout": socket[3]} {
		if n > 0 {
			errs[class] = n
		}
	}
	all := WorkloadResult{Name: "all", Requests: complete + errs["transport"], OK: max(complete-status-socket[3], 0),
		Errors: errs, Latency: lat}
	elapsed := time.Duration(w.elapsed * float64(time.Millisecond))
	return LoadResult{Mode: "closed", Elapsed: elapsed, RPS: float64(complete) / elapsed.Seconds(), All: all}
}

// parseWrkTime reads one of wrk's times, such as 342.00us, 3.75ms, 1.00s
// or 1.50m, in milliseconds.
func parseWrkTime(s string) (float64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return r >= 'a' && r <= 'z' })
	if i <= 0 {
		return 0, fmt.Errorf("time %q: want a number and a unit (us, ms, s, m, h)", s)
	}
	scale, ok := wrkUnits[s[i:]]
	if !ok {
		return 0, fmt.Errorf("time %q: unknown unit %q", s, s[i:])
	}
	v, err := parseNumber(s[:i])
	if err != nil {
		return 0, fmt.Errorf("time %q: %w", s, err)
	}
	ms := v * scale
	if ms > float64(100*365*24*time.Hour/time.Millisecond) {
		return 0, fmt.Errorf("time %q: over a century", s)
	}
	return ms, nil
}

// parseNumber reads a finite, non-negative decimal number.
func parseNumber(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || strings.ContainsAny(s, "xXpPeEnNiI_") {
		return 0, fmt.Errorf("%q is not a non-negative decimal number", s)
	}
	return v, nil
}

// parseCount reads a count no larger than maxWrkCount.
func parseCount(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > maxWrkCount {
		return 0, fmt.Errorf("%q is not a count", s)
	}
	return n, nil
}
