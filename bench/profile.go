package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// ErrProfile reports an unknown or invalid fault profile.
var ErrProfile = errors.New("bench: fault profile")

// Profile is the chaos upstream's fault profile: how long answers take and
// which share of requests fail, and how. Percentages are of all requests
// (0–100) and must add up to at most 100; a request gets at most one fault.
// The zero value is the happy path: no latency, no faults.
type Profile struct {
	// Name identifies a named profile in reports ("none", "standard", or
	// "custom" once flags change it).
	Name string `json:"name"`
	// LatencyFixed is added to every answer.
	LatencyFixed time.Duration `json:"-"`
	// LatencyExpMean, when positive, adds an exponentially distributed
	// delay with this mean on top of LatencyFixed.
	LatencyExpMean time.Duration `json:"-"`

	// Error500 is the percentage answered 500 after doing the work (a side
	// effect happened).
	Error500 float64 `json:"error_500_pct"`
	// Error503 is the percentage answered 503 before doing the work.
	Error503 float64 `json:"error_503_pct"`
	// RateLimited is the percentage answered 429 before doing the work,
	// with Retry-After, retry-after-ms, OpenAI x-ratelimit-* and Anthropic
	// anthropic-ratelimit-* headers all pointing RetryAfter ahead.
	RateLimited float64 `json:"rate_limited_pct"`
	// Malformed is the percentage answered 200 application/json with a
	// truncated, unparseable body (or a broken SSE event) after the work.
	Malformed float64 `json:"malformed_pct"`
	// Reset is the percentage whose connection is reset (TCP RST) after
	// the work and before any answer: the outcome is unknown to the client.
	Reset float64 `json:"reset_pct"`
	// Hang is the percentage that never answer (until HangFor or Shutdown)
	// after doing the work.
	Hang float64 `json:"hang_pct"`
	// CutStream is the percentage of streaming requests whose stream stops
	// half-way without its final chunk. It applies only to streams.
	CutStream float64 `json:"cut_stream_pct"`

	// RetryAfter is the reset hint sent with 429s. Default 1s.
	RetryAfter time.Duration `json:"-"`
	// HangFor bounds a hang. Default 60s.
	HangFor time.Duration `json:"-"`
}

// profileTimes are a profile's durations in JSON, in seconds: a bare
// time.Duration would be nanoseconds without a unit.
type profileTimes struct {
	LatencyFixed   float64 `json:"latency_fixed_s"`
	LatencyExpMean float64 `json:"latency_exp_mean_s"`
	RetryAfter     float64 `json:"retry_after_s"`
	HangFor        float64 `json:"hang_for_s"`
}

// MarshalJSON writes the profile with its durations in seconds
// (latency_fixed_s, latency_exp_mean_s, retry_after_s, hang_for_s).
func (p Profile) MarshalJSON() ([]byte, error) {
	type fields Profile // without these methods
	return json.Marshal(struct {
		fields
		profileTimes
	}{fields(p), profileTimes{p.LatencyFixed.Seconds(), p.LatencyExpMean.Seconds(), p.RetryAfter.Seconds(), p.HangFor.Seconds()}})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Profile) UnmarshalJSON(b []byte) error {
	type fields Profile
	var v struct {
		fields
		profileTimes
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*p = Profile(v.fields)
	t := v.profileTimes
	p.LatencyFixed, p.LatencyExpMean = fromSeconds(t.LatencyFixed), fromSeconds(t.LatencyExpMean)
	p.RetryAfter, p.HangFor = fromSeconds(t.RetryAfter), fromSeconds(t.HangFor)
	return nil
}

// profiles are the named fault profiles. Each call returns a fresh copy.
func namedProfiles() map[string]Profile {
	return map[string]Profile{
		"none": {Name: "none"},
		// standard is the documented chaos profile (bench/README.md).
		"standard": {Name: "standard", Error503: 10, RateLimited: 10, Malformed: 5, Reset: 5, Hang: 2, RetryAfter: 100 * time.Millisecond},
	}
}

// ProfileNames lists the named profiles, sorted.
func ProfileNames() []string {
	var names []string
	for n := range namedProfiles() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NamedProfile returns the named profile, or an error wrapping ErrProfile.
func NamedProfile(name string) (Profile, error) {
	p, ok := namedProfiles()[name]
	if !ok {
		return Profile{}, fmt.Errorf("%w: unknown profile %q (known: %v)", ErrProfile, name, ProfileNames())
	}
	return p, nil
}

// Validate reports percentages out of range or summing beyond 100.
func (p Profile) Validate() error {
	var errs []error
	sum := 0.0
	for _, f := range []struct {
		name string
		v    float64
	}{{"500", p.Error500}, {"503", p.Error503}, {"429", p.RateLimited}, {"malformed", p.Malformed},
		{"reset", p.Reset}, {"hang", p.Hang}, {"cut", p.CutStream}} {
		if f.v < 0 || f.v > 100 || math.IsNaN(f.v) {
			errs = append(errs, fmt.Errorf("%w: %s: %v%% is not within 0–100", ErrProfile, f.name, f.v))
		}
		sum += f.v
	}
	if sum > 100 {
		errs = append(errs, fmt.Errorf("%w: the percentages add up to %v%%, more than 100", ErrProfile, sum))
	}
	if p.LatencyFixed < 0 || p.LatencyExpMean < 0 || p.RetryAfter < 0 || p.HangFor < 0 {
		errs = append(errs, fmt.Errorf("%w: durations must not be negative", ErrProfile))
	}
	return errors.Join(errs...)
}

// fault is what the chaos upstream does with one request.
type fault uint8

const (
	faultNone fault = iota
	fault500
	fault503
	fault429
	faultMalformed
	faultReset
	faultHang
	faultCut
)

// String names the fault as reports and tests do.
func (f fault) String() string {
	return [...]string{"none", "500", "503", "429", "malformed", "reset", "hang", "cut"}[f]
}

// sideEffect reports whether the upstream did the work before failing:
// rejections (429, 503) do not; everything else does.
func (f fault) sideEffect() bool { return f != fault503 && f != fault429 }

// pick maps u, uniform in [0,100), to a fault. Cut applies to streams only.
func (p *Profile) pick(u float64, stream bool) fault {
	for _, c := range [...]struct {
		pct float64
		f   fault
	}{{p.Error500, fault500}, {p.Error503, fault503}, {p.RateLimited, fault429}, {p.Malformed, faultMalformed},
		{p.Reset, faultReset}, {p.Hang, faultHang}, {p.CutStream, faultCut}} {
		if u < c.pct {
			if c.f == faultCut && !stream {
				return faultNone
			}
			return c.f
		}
		u -= c.pct
	}
	return faultNone
}

// faulty reports whether the profile can fail or delay anything.
func (p *Profile) faulty() bool {
	return p.LatencyFixed > 0 || p.LatencyExpMean > 0 || p.Error500+p.Error503+p.RateLimited+p.Malformed+p.Reset+p.Hang+p.CutStream > 0
}

// delay is the latency for a request whose uniform draw in (0,1] is v.
func (p *Profile) delay(v float64) time.Duration {
	d := p.LatencyFixed
	if p.LatencyExpMean > 0 && v > 0 {
		d += time.Duration(-math.Log(v) * float64(p.LatencyExpMean))
	}
	return d
}
