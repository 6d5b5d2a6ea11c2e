package config

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzExpandEnv checks ${NAME} expansion against its definition, built
// from three fuzzed pieces of literal text and two variables:
//   - escaping: text with every $ doubled expands to the text itself;
//   - substitution: lit1 ${A} lit2 ${B} lit3 (each literal escaped)
//     expands to lit1 + A's value + lit2 + B's value + lit3, whatever the
//     values hold ($, braces and all: a value is never expanded again);
//   - an unset variable is an error naming it, never an empty string;
//   - any input at all gives a string or an error, never a panic.
func FuzzExpandEnv(f *testing.F) {
	f.Add("plain", "a ", "$x", "", "v1", "${B}", "${A")
	f.Add("$", "$$", "}", "{", "", "$", "$${A}")
	f.Add("cost: $5 ${", "x", "y", "z", "ünï", "}{", "${}")
	f.Fuzz(func(t *testing.T, text, lit1, lit2, lit3, valA, valB, raw string) {
		env := map[string]string{"A": valA, "B_2": valB}
		lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		esc := func(s string) string { return strings.ReplaceAll(s, "$", "$$") }

		if got, err := ExpandEnv(esc(text), lookup); err != nil || got != text {
			t.Fatalf("ExpandEnv(%q) = %q, %v; want the text back", esc(text), got, err)
		}
		tmpl := esc(lit1) + "${A}" + esc(lit2) + "${B_2}" + esc(lit3)
		if got, err := ExpandEnv(tmpl, lookup); err != nil || got != lit1+valA+lit2+valB+lit3 {
			t.Fatalf("ExpandEnv(%q) = %q, %v; want %q", tmpl, got, err, lit1+valA+lit2+valB+lit3)
		}
		missing := esc(lit1) + "${MISSING_1}"
		if got, err := ExpandEnv(missing, lookup); err == nil || !strings.Contains(err.Error(), "MISSING_1") {
			t.Fatalf("ExpandEnv(%q) = %q, %v; want an error naming MISSING_1", missing, got, err)
		}
		_, _ = ExpandEnv(raw, lookup)
	})
}

// FuzzUnitsRoundTrip checks the config's duration and size parsers
// against the standard library and against their own output:
//   - ParseDuration agrees with time.ParseDuration on everything it
//     accepts, accepts nothing negative or above MaxDuration, and reads
//     back what Duration.MarshalText writes for any duration in range;
//   - ParseSize reads n written with each unit (and a space before it)
//     as n times the unit, up to 1 TiB, and refuses it above.
func FuzzUnitsRoundTrip(f *testing.F) {
	f.Add("1m30s", int64(90*time.Second), int64(10), uint8(1))
	f.Add(" 0 ", int64(0), int64(0), uint8(0))
	f.Add("87600h0m0.000000001s", int64(MaxDuration), int64(1<<40), uint8(6))
	f.Add("+5s", int64(-1), int64(1024), uint8(2))
	f.Fuzz(func(t *testing.T, s string, d, n int64, unit uint8) {
		if v, err := ParseDuration(s); err == nil {
			ref, rerr := time.ParseDuration(strings.TrimSpace(s))
			if strings.TrimSpace(s) == "0" {
				ref, rerr = 0, nil
			}
			if rerr != nil || ref != v || v < 0 || v > MaxDuration {
				t.Fatalf("ParseDuration(%q) = %v; time.ParseDuration: %v, %v", s, v, ref, rerr)
			}
		}
		if d < 0 {
			d = -(d + 1)
		}
		d %= int64(MaxDuration) + 1
		text, _ := Duration(d).MarshalText()
		var back Duration
		if err := back.UnmarshalText(text); err != nil || int64(back) != d {
			t.Fatalf("duration %d written as %q read back as %d, %v", d, text, back, err)
		}

		u := sizeUnits[int(unit)%len(sizeUnits)]
		if n < 0 {
			n = -(n + 1)
		}
		n %= 1<<41 + 1
		for _, sep := range []string{"", " "} {
			v := strconv.FormatInt(n, 10) + sep + u.suffix
			got, err := ParseSize(v)
			switch {
			case n <= (1<<40)/u.mult && (err != nil || got != n*u.mult):
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", v, got, err, n*u.mult)
			case n > (1<<40)/u.mult && err == nil:
				t.Fatalf("ParseSize(%q) = %d, above 1TiB", v, got)
			}
		}
	})
}
