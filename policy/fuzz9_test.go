package policy

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var refDecimalSyntax = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// refDecimal is parseDecimal the slow way: the syntax by regular
// expression, the parts by strconv, the fraction truncated to nine digits.
func refDecimal(v string) (whole, frac int64, ok bool) {
	if !refDecimalSyntax.MatchString(v) {
		return 0, 0, false
	}
	w, f, _ := strings.Cut(v, ".")
	whole, err := strconv.ParseInt(w, 10, 64)
	if err != nil || whole > maxDecimalWhole {
		return 0, 0, false
	}
	f = (f + "000000000")[:9]
	frac, _ = strconv.ParseInt(f, 10, 64)
	return whole, frac, true
}

// FuzzResetDurations is a differential test of the reset and delay
// parsers against references built on the standard library:
//   - parseDecimal against refDecimal (regexp + strconv);
//   - parseSeconds / parseMillis: exactly the decimal scaled, when within
//     MaxHint, and never ok otherwise;
//   - parseGoDuration (OpenAI's x-ratelimit-reset-*: "1m30.5s") against
//     time.ParseDuration: a bare decimal is seconds; anything else it
//     accepts, time.ParseDuration accepts with the same value, and every
//     unsigned value time.ParseDuration reads within MaxHint it accepts.
func FuzzResetDurations(f *testing.F) {
	for _, s := range []string{
		"0", "1", "1.5", "0.000000001", "1.0000000009", "20ms", "6m0s", "1m30.5s", ".5s", "1h1h",
		"9223372036854775807ns", "8760h", "8760h1ns", "1e3", "-1s", "+1s", " 3s\t", "1.", "01.50",
		"1000000000000000", "1000000000000001", "3µs", "2562047h47m16.854775807s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := []byte(s)
		w, fr, ok := parseDecimal(v)
		rw, rfr, rok := refDecimal(s)
		if w != rw || fr != rfr || ok != rok {
			t.Fatalf("parseDecimal(%q) = %d, %d, %v; reference %d, %d, %v", s, w, fr, ok, rw, rfr, rok)
		}
		tr := strings.Trim(s, " \t")
		if d, ok := parseSeconds(v); ok != (rok && rw <= int64(MaxHint/time.Second) && time.Duration(rw)*time.Second+time.Duration(rfr) <= MaxHint) ||
			ok && d != time.Duration(rw)*time.Second+time.Duration(rfr) {
			t.Fatalf("parseSeconds(%q) = %v, %v", s, d, ok)
		}
		mw, mfr, mok := refDecimal(tr)
		if d, ok := parseMillis(v); ok != (mok && mw <= int64(MaxHint/time.Millisecond) && time.Duration(mw)*time.Millisecond+time.Duration(mfr/1e3) <= MaxHint) ||
			ok && d != time.Duration(mw)*time.Millisecond+time.Duration(mfr/1e3) {
			t.Fatalf("parseMillis(%q) = %v, %v", s, d, ok)
		}

		d, ok := parseGoDuration(v)
		if ok && (d < 0 || d > MaxHint) {
			t.Fatalf("parseGoDuration(%q) = %v, outside [0, MaxHint]", s, d)
		}
		if _, _, bare := refDecimal(tr); bare {
			sw, sfr, _ := refDecimal(tr)
			want := time.Duration(sw)*time.Second + time.Duration(sfr)
			if sw <= int64(MaxHint/time.Second) && want <= MaxHint && (!ok || d != want) {
				t.Fatalf("parseGoDuration(%q) = %v, %v; a bare decimal is %v", s, d, ok, want)
			}
			return
		}
		ref, err := time.ParseDuration(tr)
		unsigned := tr != "" && tr[0] != '+' && tr[0] != '-'
		switch {
		case ok && (err != nil || ref != d):
			t.Fatalf("parseGoDuration(%q) = %v; time.ParseDuration: %v, %v", s, d, ref, err)
		case !ok && err == nil && unsigned && ref >= 0 && ref <= MaxHint:
			t.Fatalf("parseGoDuration(%q) refused what time.ParseDuration reads as %v", s, ref)
		}
	})
}

// FuzzResetInstant round-trips Anthropic's RFC 3339 resets: any instant,
// written with any whole-minute UTC offset and any fraction precision,
// parses to exactly the wait until it from now (0 once past), or is
// refused only when it is more than MaxHint away.
func FuzzResetInstant(f *testing.F) {
	f.Add(int64(1715680817), int32(0), int16(0), uint8(0), int64(1715680800))
	f.Add(int64(1715680817), int32(500_000_000), int16(-330), uint8(3), int64(1715680800))
	f.Add(int64(1715680700), int32(999_999_999), int16(840), uint8(9), int64(1715680800))
	f.Add(int64(1715680800+366*86400), int32(1), int16(60), uint8(9), int64(1715680800))
	f.Fuzz(func(t *testing.T, sec int64, nsec int32, offMin int16, digits uint8, nowSec int64) {
		// RFC 3339 years are four digits.
		sec = 1<<31 + sec%(1<<32)
		nowSec = 1<<31 + nowSec%(1<<32)
		nsec = int32(uint32(nsec) % 1e9)
		offMin %= 24 * 60
		at := time.Unix(sec, int64(nsec)).In(time.FixedZone("", int(offMin)*60))
		now := time.Unix(nowSec, 0)
		layout := "2006-01-02T15:04:05"
		n := int(digits % 10)
		if n > 0 {
			layout += "." + strings.Repeat("0", n)
		}
		at = at.Truncate(time.Duration(pow10(9 - n)))
		layout += "Z07:00"
		v := at.Format(layout)
		d, ok := parseResetInstant([]byte(" "+v+"\t"), now)
		var want time.Duration
		wantOK := true
		if at.After(now) {
			want = at.Sub(now)
			if want > MaxHint {
				want, wantOK = 0, false
			}
		}
		if d != want || ok != wantOK {
			t.Fatalf("parseResetInstant(%q) at %v = %v, %v; want %v, %v", v, now.UTC(), d, ok, want, wantOK)
		}
	})
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}

// refRateLimitField parses an IETF RateLimit field value the slow way: a
// character-at-a-time scanner that splits the list and each member's
// parameters outside quoted strings (backslash escapes honoured), then
// reads t= and r= with refDecimal; the last of a repeated parameter wins.
func refRateLimitField(v string) (all, exhausted time.Duration, okAll, okExhausted bool) {
	split := func(s string, sep byte) []string {
		var out []string
		var cur strings.Builder
		quoted, escaped := false, false
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case escaped:
				escaped = false
			case quoted && c == '\\':
				escaped = true
			case c == '"':
				quoted = !quoted
			case !quoted && c == sep:
				out = append(out, cur.String())
				cur.Reset()
				continue
			}
			cur.WriteByte(c)
		}
		return append(out, cur.String())
	}
	for _, member := range split(v, ',') {
		var tOK, ex bool
		var td time.Duration
		for i, p := range split(member, ';') {
			p = strings.Trim(p, " \t")
			if i == 0 || len(p) < 3 || p[1] != '=' {
				continue
			}
			w, fr, ok := refDecimal(p[2:])
			switch p[0] {
			case 't':
				td, tOK = 0, false
				if ok && w <= int64(MaxHint/time.Second) {
					if d := time.Duration(w)*time.Second + time.Duration(fr); d <= MaxHint {
						td, tOK = d, true
					}
				}
			case 'r':
				ex = ok && w == 0 && fr == 0
			}
		}
		if !tOK {
			continue
		}
		if !okAll || td > all {
			all, okAll = td, true
		}
		if ex && (!okExhausted || td > exhausted) {
			exhausted, okExhausted = td, true
		}
	}
	return all, exhausted, okAll, okExhausted
}

// FuzzRateLimitFieldReference is a differential test of the IETF
// RateLimit field parser against refRateLimitField.
func FuzzRateLimitFieldReference(f *testing.F) {
	for _, s := range []string{
		`"default";r=0;t=30`, `"a";r=5;t=10, "b";r=0;t=60`, `"x;t=99";t=3`, `"q\"t=9, r=0";r=0;t=7`,
		`a;t=1;t=2`, `a;t=2;t=x`, `a;r=0.0;t=1.5`, `,,;t=4`, `"unterminated;t=5`, `a;t=5, "b\`, `a ; t=5 ; r=0`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := parseRateLimitField([]byte(v))
		all, ex, okAll, okEx := refRateLimitField(v)
		if got.all != all || got.exhausted != ex || got.okAll != okAll || got.okExhausted != okEx {
			t.Fatalf("parseRateLimitField(%q) = %+v; reference all %v %v, exhausted %v %v", v, got, all, okAll, ex, okEx)
		}
	})
}
