package proxy

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// The cached formatter writes exactly what time.RFC3339Nano does, whatever
// order the times come in (same second, next second, earlier second).
func TestStampCacheMatchesRFC3339Nano(t *testing.T) {
	var c stampCache
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 11, 26, 23, 59, 58, 0, time.UTC)
	cases := []time.Time{
		base,                             // whole second: no fraction
		base.Add(100 * time.Millisecond), // trailing zeros trimmed
		base.Add(123456789),              // full nanoseconds
		base.Add(time.Second + 1),        // next second, 1 ns
		base.Add(2*time.Second + 5000),   // across midnight into a new month
		base.Add(-time.Hour),             // back in time
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 1, time.UTC), // beyond RFC 3339's years
		time.Date(2026, 3, 29, 2, 30, 0, 7, time.FixedZone("CEST", 2*3600)),
	}
	for range 2000 {
		cases = append(cases, base.Add(time.Duration(rng.Int64N(int64(3*time.Second)))))
	}
	for _, tc := range cases {
		got := string(c.appendRFC3339Nano(nil, tc))
		want := tc.UTC().Format(time.RFC3339Nano)
		if got != want {
			t.Fatalf("appendRFC3339Nano(%v) = %q, want %q", tc, got, want)
		}
	}
}

func TestAppendMillisMatchesAppendFloat(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ds := []time.Duration{0, time.Microsecond, 999 * time.Microsecond, time.Millisecond, 1500 * time.Nanosecond,
		time.Hour + 7*time.Microsecond, -2500 * time.Microsecond}
	for range 2000 {
		ds = append(ds, time.Duration(rng.Int64N(int64(10*time.Minute))))
	}
	for _, d := range ds {
		got := string(appendMillis(nil, d))
		want := strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64)
		if got != want {
			t.Fatalf("appendMillis(%v) = %q, want %q", d, got, want)
		}
	}
}

// Escaping still applies after a plain prefix.
func TestAppendJSONStringEscapesAfterAPlainPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"":             `""`,
		"plain":        `"plain"`,
		`a"b`:          `"a\"b"`,
		"path\\x":      `"path\\x"`,
		"tab\there":    `"tab\u0009here"`,
		"del\x7f":      `"del\u007f"`,
		"café":         `"café"`,
		"bad\xffutf8":  `"bad\ufffdutf8"`,
		"/v1/chat?q=1": `"/v1/chat?q=1"`,
	} {
		if got := string(appendJSONString(nil, in)); got != want {
			t.Errorf("appendJSONString(%q) = %s, want %s", in, got, want)
		}
	}
}
