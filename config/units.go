package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in config as a Go duration string
// ("250ms", "30s", "1h30m"). A bare 0 means zero.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalText parses a Go duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the Go duration form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// durationSyntax matches what time.ParseDuration reads, so that a
// duration it refuses in this form is one too long for a time.Duration.
var durationSyntax = regexp.MustCompile(`^[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// ParseDuration parses a Go duration and refuses negative values and values
// above MaxDuration.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil && !durationSyntax.MatchString(s) {
		return 0, fmt.Errorf("%q is not a duration (use Go syntax such as 250ms, 30s or 2m)", s)
	}
	if v < 0 || (err != nil && strings.HasPrefix(s, "-")) {
		return 0, fmt.Errorf("%q is negative", s)
	}
	if err != nil || v > MaxDuration {
		return 0, fmt.Errorf("%q is longer than %s, the longest duration ballast accepts", s, "87600h (10 years)")
	}
	return v, nil
}

// MaxDuration is the longest duration a config accepts: ten years, far
// beyond any timeout, TTL or window that means something, and far enough
// below time.Duration's 292 years that sums of a few durations
// (cache.ttl + cache.stale, a deadline plus a lease) cannot overflow.
const MaxDuration = 87600 * time.Hour

// Size is a byte count written in config as a plain integer or with a unit:
// 512, 64KiB, 10MiB, 1GiB (binary) or 10KB, 10MB (decimal).
type Size int64

// UnmarshalText parses a size.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// MarshalJSON writes the size as a plain number of bytes.
func (s Size) MarshalJSON() ([]byte, error) { return json.Marshal(int64(s)) }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses a byte count such as "10MiB". It refuses negative values
// and values above 1 TiB.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(num, "-") {
		return 0, fmt.Errorf("%q is larger than 1TiB", s)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (use bytes or a unit such as 64KiB or 10MiB)", s)
	}
	if n < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	const maxSize = 1 << 40
	if n > maxSize/mult {
		return 0, fmt.Errorf("%q is larger than 1TiB", s)
	}
	return n * mult, nil
}
