package cache

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// refDirectives splits a Cache-Control (or Pragma, Vary) value the slow
// way: a character at a time, commas inside quoted strings (with their
// backslash escapes) not splitting, an unterminated quoted string running
// to the end of the value; members trimmed, empty ones dropped.
func refDirectives(v string) []string {
	var out []string
	var cur strings.Builder
	quoted, escaped := false, false
	flush := func() {
		if d := strings.TrimSpace(cur.String()); d != "" {
			out = append(out, d)
		}
		cur.Reset()
	}
	for _, c := range []byte(v) {
		switch {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case !quoted && c == ',':
			flush()
			continue
		}
		cur.WriteByte(c)
	}
	flush()
	return out
}

// FuzzDirectivesReference is a differential test of the directive
// splitter every Cache-Control, Pragma and Vary rule reads with, against
// refDirectives: the same members, byte for byte, in the same order. A
// member lost here is a directive ignored (a private or no-store).
func FuzzDirectivesReference(f *testing.F) {
	for _, s := range []string{
		"no-store", "private, max-age=5", `private="a,b", no-cache`, `x="\"", no-store`, ",,,",
		`"unterminated, private`, `max-age=5, private="\`, `no-cache="a\,b", s-maxage=1`, " \t, a ,\t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var got []string
		for d := range Members([]byte(v)) {
			got = append(got, string(d))
		}
		if want := refDirectives(v); !slices.Equal(got, want) {
			t.Fatalf("Members(%q) = %q; the reference reads %q", v, got, want)
		}
	})
}

// refDeltaSeconds reads delta-seconds (RFC 9111 §1.2.2: 1*DIGIT, or the
// quoted form §5.2 tells recipients to accept), saturating when too large
// for a Duration; -1 when it is not one.
func refDeltaSeconds(v string) time.Duration {
	v = strings.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return -1
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > uint64((1<<63-1)/int64(time.Second)) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(n) * time.Second
}

// refLifetime is RFC 9111 §4.2.1 read literally over stored header lines:
// no-cache gives 0; else s-maxage, else max-age, else Expires; when a
// directive or Expires appears more than once, the first occurrence is
// used.
func refLifetime(header string, storedAt time.Time) (time.Duration, bool) {
	var maxAge, sMaxAge *time.Duration
	var expires *string
	noCache := false
	for _, line := range strings.Split(header, "\r\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch strings.ToLower(name) {
		case "cache-control":
			for _, d := range refDirectives(value) {
				dn, dv, _ := strings.Cut(d, "=")
				switch strings.ToLower(strings.TrimSpace(dn)) {
				case "no-cache":
					noCache = true
				case "s-maxage":
					if sMaxAge == nil {
						v := refDeltaSeconds(dv)
						sMaxAge = &v
					}
				case "max-age":
					if maxAge == nil {
						v := refDeltaSeconds(dv)
						maxAge = &v
					}
				}
			}
		case "expires":
			if expires == nil {
				expires = &value
			}
		}
	}
	switch {
	case noCache:
		return 0, true
	case sMaxAge != nil && *sMaxAge >= 0:
		return *sMaxAge, true
	case maxAge != nil && *maxAge >= 0:
		return *maxAge, true
	case expires != nil:
		t, err := fasthttp.ParseHTTPDate([]byte(strings.TrimSpace(*expires)))
		if err != nil {
			return 0, true
		}
		return max(t.Sub(storedAt), 0), true
	}
	return 0, false
}

// FuzzLifetimeReference is a differential test of Lifetime against
// refLifetime. Lifetime may be more lenient about quotes around a
// delta-seconds (max-age="5), never different on a well-formed value,
// and never longer than the first occurrence of a directive says.
func FuzzLifetimeReference(f *testing.F) {
	for _, s := range []string{
		"Cache-Control: max-age=60, s-maxage=\"5\"\r\nExpires: Fri, 27 Nov 2026 08:00:30 GMT\r\n",
		"Cache-Control: max-age=0, max-age=3600\r\n",
		"Cache-Control: max-age=10\r\nCache-Control: max-age=99999\r\n",
		"cache-control: S-MAXAGE=7, no-cache=\"x,y\"\r\n",
		"Expires: 0\r\nExpires: Fri, 27 Nov 2026 08:00:30 GMT\r\n",
		"Cache-Control: max-age=99999999999999999999999\r\n",
		"Cache-Control: private=\"\\\r\nCache-Control: max-age=1\r\n",
	} {
		f.Add(s)
	}
	storedAt := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, header string) {
		got, ok := Lifetime([]byte(header), storedAt)
		want, wantOK := refLifetime(header, storedAt)
		if got == want && ok == wantOK {
			return
		}
		if strings.Contains(header, `"`) && ok && (!wantOK || got <= want || want == 0) {
			return // a quoted delta-seconds read leniently
		}
		t.Fatalf("Lifetime(%q) = %v, %v; the reference reads %v, %v", header, got, ok, want, wantOK)
	})
}

// FuzzVaryReference checks the Vary rules against the member list of
// refDirectives: the options a response teaches (WithVary) cover every
// field its Vary names (VaryCovered), and it can teach them exactly when
// the distinct uncovered names, compared without regard to case and "*"
// aside, are no more than MaxVary.
func FuzzVaryReference(f *testing.F) {
	for _, s := range []string{"Accept-Encoding", "accept, X-Tenant", "*", "a, *", `"x,y", z`, ",,", "A, a, A",
		"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", "authorization, a, \"b\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var rh fasthttp.ResponseHeader
		rh.Set("Vary", v)
		seen := string(rh.Peek("Vary")) // as fasthttp keeps it
		var o KeyOptions
		var uncovered []string
		for _, name := range refDirectives(seen) {
			if name != "*" && !o.covers([]byte(name)) && !slices.ContainsFunc(uncovered, func(u string) bool { return strings.EqualFold(u, name) }) {
				uncovered = append(uncovered, name)
			}
		}
		learned, ok := o.WithVary(&rh)
		if ok != (len(uncovered) <= MaxVary) {
			t.Fatalf("Vary %q: WithVary ok=%v with %d uncovered names %q", seen, ok, len(uncovered), uncovered)
		}
		if !ok {
			return
		}
		if !learned.VaryCovered(&rh) || len(learned.Vary) != len(uncovered) {
			t.Fatalf("Vary %q: learned %q, want the %d names %q", seen, learned.Vary, len(uncovered), uncovered)
		}
	})
}
