package proxy

import (
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/valyala/fasthttp"
)

func TestCooldowns(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	var alice, bob, none fasthttp.RequestHeader
	alice.Set("Authorization", "Bearer alice")
	bob.Set("Authorization", "Bearer bob")
	var c cooldowns
	if c.Remaining(&alice, now) != 0 || c.Longest(now) != 0 {
		t.Fatal("the zero value has pauses")
	}
	steps := []struct {
		name  string
		cred  *fasthttp.RequestHeader
		until time.Duration
		want  bool
	}{
		{name: "alice paused", cred: &alice, until: 10 * time.Second, want: true},
		{name: "a shorter pause is ignored", cred: &alice, until: 5 * time.Second, want: false},
		{name: "a longer one extends", cred: &alice, until: 20 * time.Second, want: true},
		{name: "a pause that has ended is ignored", cred: &bob, until: 0, want: false},
		{name: "no credential is one of its own", cred: &none, until: 3 * time.Second, want: true},
	}
	for _, st := range steps {
		if got := c.Extend(credentialOf(st.cred), now.Add(st.until), now); got != st.want {
			t.Errorf("%s: Extend = %v, want %v", st.name, got, st.want)
		}
	}
	for _, tt := range []struct {
		name string
		h    *fasthttp.RequestHeader
		at   time.Duration
		want time.Duration
	}{
		{name: "alice waits", h: &alice, want: 20 * time.Second},
		{name: "bob does not", h: &bob, want: 0},
		{name: "no credential", h: &none, want: 3 * time.Second},
		{name: "alice later", h: &alice, at: 15 * time.Second, want: 5 * time.Second},
		{name: "after the last pause", h: &alice, at: 25 * time.Second, want: 0},
	} {
		if got := c.Remaining(tt.h, now.Add(tt.at)); got != tt.want {
			t.Errorf("%s: Remaining = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := c.Longest(now.Add(5 * time.Second)); got != 15*time.Second {
		t.Errorf("Longest = %v, want alice's 15s", got)
	}

	// A full table makes room by dropping ended pauses, and refuses a new
	// credential only when every pause still runs.
	var full cooldowns
	for i := range maxCooldowns {
		var cred credential
		cred[0], cred[1], cred[2] = byte(i), byte(i>>8), 1
		end := time.Second
		if i%2 == 0 {
			end = time.Hour
		}
		full.Extend(cred, now.Add(end), now)
	}
	if !full.Extend(credentialOf(&alice), now.Add(time.Minute), now.Add(2*time.Second)) {
		t.Error("a full table did not drop the ended pauses for a new one")
	}
	for i := 0; len(full.until) < maxCooldowns; i++ {
		var cred credential
		cred[0], cred[1], cred[2] = byte(i), byte(i>>8), 2
		full.Extend(cred, now.Add(time.Hour), now)
	}
	if full.Extend(credentialOf(&bob), now.Add(time.Minute), now) {
		t.Error("a table full of running pauses took one more")
	}
}

func TestParseCredential(t *testing.T) {
	var h fasthttp.RequestHeader
	h.Set("X-Api-Key", "k")
	c := credentialOf(&h)
	if back, ok := parseCredential(c.String()); !ok || back != c {
		t.Errorf("round trip: %v %v", back, ok)
	}
	for _, bad := range []string{"", "zz", c.String()[:10], c.String() + "00"} {
		if _, ok := parseCredential(bad); ok {
			t.Errorf("parseCredential(%q) accepted", bad)
		}
	}
}

// parseCredential reads field names from Redis, which any replica (or
// anyone with access) may have written.
func FuzzParseCredential(f *testing.F) {
	var h fasthttp.RequestHeader
	h.Set("Authorization", "Bearer k")
	f.Add(credentialOf(&h).String())
	f.Add("")
	f.Add("0123456789abcdef01234567")
	f.Add("0123456789abcdef0123456z")
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := parseCredential(s)
		if ok && c.String() != strings.ToLower(s) {
			t.Errorf("parseCredential(%q) = %s", s, c)
		}
	})
}

// Upstreams that share a host but differ in scheme or connect timeout are
// pooled apart; a cool-down the fleet shares by host must reach each, with
// the largest retry.max_cooldown of the routes that send to it.
func TestCooldownCapsKeepEveryUpstreamOfAHost(t *testing.T) {
	s := newStatusServer(t, `routes:
  - {name: a, match: {path_prefix: /a/}, upstream: "http://api.example:443", retry: {max_cooldown: 1h}}
  - {name: b, match: {path_prefix: /b/}, upstream: "https://api.example:443", retry: {max_cooldown: 2h}}
  - {name: c, match: {path_prefix: /c/}, upstream: "http://api.example:443", timeouts: {connect: 1s}}
  - {name: d, match: {path_prefix: /d/}, upstream: "http://api.example:443", retry: {max_cooldown: 3h}}
`)
	caps := s.cooldownCaps()["api.example:443"]
	if len(caps) != 3 {
		t.Fatalf("cooldownCaps holds %d upstreams of the host, want 3: %v", len(caps), caps)
	}
	var got []time.Duration
	for _, c := range caps {
		got = append(got, c)
	}
	slices.Sort(got)
	if want := []time.Duration{2 * time.Hour, 3 * time.Hour, 24 * time.Hour}; !slices.Equal(got, want) {
		t.Errorf("caps of the host's upstreams = %v, want %v (the largest of the routes sending to each)", got, want)
	}
}

// The pool keeps only the upstreams the table in force uses: one a reload
// dropped goes (its idle connections closed), and one it kept stays, warm.
func TestUpstreamPoolKeepsOnlyTheGenerationInForce(t *testing.T) {
	p := newUpstreamPool(policy.SystemClock{})
	get := func(raw string) *upstream {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		up, _, err := p.get(u, "", time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		return up
	}
	p.begin()
	a, _ := get("http://a.example:80"), get("http://b.example:80")
	p.sweep()
	p.begin()
	if again := get("http://a.example:80"); again != a {
		t.Fatal("an upstream the new table keeps was not reused")
	}
	p.sweep()
	if n := len(p.all); n != 1 {
		t.Fatalf("the pool holds %d upstreams after a reload that dropped one, want 1", n)
	}
}
