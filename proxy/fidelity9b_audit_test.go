package proxy_test

// Fidelity, second pass: what fidelity9_audit_test.go left open. An
// upstream's X-Ballast-* answer headers never reach the agent (they are
// ballast's namespace, README "Headers"), replays answer with the
// standard reason phrase (documented), and an async job's request
// reaches the upstream with the agent's Cookie lines as a direct request
// does.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fi9bForged are X-Ballast-* lines an upstream (or a second ballast)
// might send, in every case, each telling of something this ballast did
// not do.
const fi9bForged = "X-Ballast-Fallback: static\r\nX-Ballast-Trail: forged-trail\r\nX-Ballast-Job-State: failed\r\n" +
	"x-ballast-outcome: unknown\r\nX-BALLAST-FOO: 1\r\nX-Ballast-Attempts: 9\r\nX-Ballast-Replayed: true\r\n" +
	"X-Ballast-Fallback: stale\r\n"

// fi9bBallastNames are the X-Ballast-* names among fields, lower-cased,
// sorted, once each.
func fi9bBallastNames(fields []string) []string {
	var ns []string
	for _, n := range fiNames(fields) {
		if strings.HasPrefix(n, "x-ballast-") {
			ns = append(ns, n)
		}
	}
	return ns
}

// TestFidelity9b_UpstreamBallastNamespace: every X-Ballast-* line of an
// upstream's answer is dropped, whatever its name's case, on a direct
// answer, a debug answer, an async job's result and an idempotent
// replay: the agent's X-Ballast-* headers are ballast's own, one line
// each.
func TestFidelity9b_UpstreamBallastNamespace(t *testing.T) {
	up := startFIUpstream(t, func(fiRequest) (string, bool) {
		return "HTTP/1.1 200 OK\r\n" + fi9bForged + "X-Kept: k\r\nContent-Length: 2\r\n\r\nok", false
	})
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - {name: plain, match: {path_prefix: /plain/}, upstream: %[1]q, retry: {attempts: 1}}
  - {name: job, match: {path_prefix: /job/}, upstream: %[1]q, retry: {attempts: 1}, async: {enabled: true}}
  - {name: idem, match: {path_prefix: /idem/}, upstream: %[1]q, retry: {attempts: 1}, idempotency: {mode: header}}
`, up.url))
	for _, tt := range []struct {
		name, req string
		times     int               // sends; the last answer is checked
		want      map[string]string // every X-Ballast-* header the agent may get, and its value ("" any)
	}{
		{name: "direct", req: "GET /plain/x HTTP/1.1\r\nHost: b\r\n", times: 1,
			want: map[string]string{"x-ballast-attempts": "1", "x-ballast-upstream": ""}},
		{name: "debug trail", req: "GET /plain/x HTTP/1.1\r\nHost: b\r\nX-Ballast-Debug: 1\r\n", times: 1,
			want: map[string]string{"x-ballast-attempts": "1", "x-ballast-upstream": "", "x-ballast-trail": ""}},
		{name: "async job result", req: "POST /job/x HTTP/1.1\r\nHost: b\r\nPrefer: respond-async, wait=10\r\nContent-Length: 1\r\n", times: 1,
			want: map[string]string{"x-ballast-attempts": "1", "x-ballast-job-state": "succeeded", "x-ballast-upstream": ""}}, // the run's upstream (jobseams11)
		{name: "idempotent replay", req: "POST /idem/x HTTP/1.1\r\nHost: b\r\nIdempotency-Key: k9b\r\nContent-Length: 1\r\n", times: 2,
			want: map[string]string{"x-ballast-attempts": "0"}}, // no X-Ballast-Upstream on replays (documented)
	} {
		t.Run(tt.name, func(t *testing.T) {
			var status string
			var fields []string
			for range tt.times {
				raw := tt.req + "Connection: close\r\n\r\n"
				if strings.Contains(tt.req, "Content-Length: 1") {
					raw += "p"
				}
				status, fields, _ = fiResponse(t, fiAgent(t, b.addr, raw))
			}
			if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
				t.Fatalf("status %q", status)
			}
			want := slices.Sorted(func(yield func(string) bool) {
				for k := range tt.want {
					if !yield(k) {
						return
					}
				}
			})
			if got := fi9bBallastNames(fields); !slices.Equal(got, want) {
				t.Errorf("the agent got X-Ballast-* headers %q, want only ballast's %q:\n%s", got, want, strings.Join(fields, "\n"))
			}
			for name, v := range tt.want {
				got := fiValues(fields, name)
				if len(got) != 1 || (v != "" && got[0] != v) || strings.HasPrefix(got[0], "forged") {
					t.Errorf("%s: %q, want one line %q (ballast's)", name, got, v)
				}
			}
			if got := fiValues(fields, "X-Kept"); !slices.Equal(got, []string{"k"}) {
				t.Errorf("X-Kept %q: other headers must pass", got)
			}
		})
	}
}

// TestFidelity9b_ReplayReasonPhrase: a direct answer keeps the upstream's
// reason phrase; an idempotent replay and an async job's result answer
// with the code's standard one (docs/config.md "Response headers": the
// store keeps the code only), with the stored headers and body.
func TestFidelity9b_ReplayReasonPhrase(t *testing.T) {
	up := startFIUpstream(t, func(fiRequest) (string, bool) {
		return "HTTP/1.1 200 Fine\r\nX-Up: u\r\nContent-Length: 2\r\n\r\nok", false
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: job, match: {path_prefix: /job/}, upstream: %[1]q, async: {enabled: true}}
  - {name: idem, match: {path_prefix: /idem/}, upstream: %[1]q, idempotency: {mode: header}}
`, up.url))
	keyed := "POST /idem/x HTTP/1.1\r\nHost: b\r\nIdempotency-Key: reason\r\nContent-Length: 1\r\nConnection: close\r\n\r\np"
	for _, tt := range []struct{ name, req, status string }{
		{"first keyed call, relayed", keyed, "HTTP/1.1 200 Fine"},
		{"replay", keyed, "HTTP/1.1 200 OK"},
		{"async job result", "POST /job/x HTTP/1.1\r\nHost: b\r\nPrefer: respond-async, wait=10\r\nContent-Length: 1\r\nConnection: close\r\n\r\np", "HTTP/1.1 200 OK"},
	} {
		status, fields, body := fiResponse(t, fiAgent(t, b.addr, tt.req))
		if status != tt.status || body != "ok" || !slices.Equal(fiValues(fields, "X-Up"), []string{"u"}) {
			t.Errorf("%s: %q %q X-Up %q, want %q %q [u]", tt.name, status, body, fiValues(fields, "X-Up"), tt.status, "ok")
		}
	}
}

// TestFidelity9b_JobCookies: an async job's request reaches the upstream
// with the same Cookie line a direct request gets: quoted and backslashed
// values as written, lines joined, the status page's session taken out.
func TestFidelity9b_JobCookies(t *testing.T) {
	up := startFIUpstream(t, func(fiRequest) (string, bool) { return fiOK, false })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: job, match: {path_prefix: /job/}, upstream: %[1]q, async: {enabled: true}}
  - {name: direct, match: {path_prefix: /direct/}, upstream: %[1]q}
`, up.url))
	const lines = "Cookie: s=\"a\\054b\"; q=\"x y\"\r\nX-A:   a  b\r\nCookie: ballast_admin=secret; u=a\\b; flag\r\n"
	const want = "s=\"a\\054b\"; q=\"x y\"; u=a\\b; flag"
	fiAgent(t, b.addr, "POST /direct/x HTTP/1.1\r\nHost: b\r\n"+lines+"Content-Length: 1\r\nConnection: close\r\n\r\np")
	direct := up.last(t)
	if got := direct.values("Cookie"); !slices.Equal(got, []string{want}) {
		t.Fatalf("direct: the upstream got Cookie %q, want %q", got, want)
	}
	for _, prefer := range []string{"respond-async, wait=10", "respond-async"} {
		status, fields, _ := fiResponse(t, fiAgent(t, b.addr, "POST /job/x HTTP/1.1\r\nHost: b\r\nPrefer: "+prefer+"\r\n"+lines+
			"Content-Length: 1\r\nConnection: close\r\n\r\np"))
		if loc := fiValues(fields, "Location"); strings.HasPrefix(status, "HTTP/1.1 202 ") && len(loc) == 1 {
			waitFor(t, func() bool {
				// The same caller: its cookies are part of its identity.
				s, _, _ := fiResponse(t, fiAgent(t, b.addr, "GET "+loc[0]+" HTTP/1.1\r\nHost: b\r\n"+lines+"Connection: close\r\n\r\n"))
				return strings.HasPrefix(s, "HTTP/1.1 200 ")
			})
		} else if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
			t.Fatalf("%s: %q", prefer, status)
		}
		job := up.last(t)
		if got := job.values("Cookie"); !slices.Equal(got, direct.values("Cookie")) {
			t.Errorf("%s: the job's upstream request got Cookie %q, a direct one %q", prefer, got, direct.values("Cookie"))
		}
		if got := job.values("X-A"); !slices.Equal(got, direct.values("X-A")) {
			t.Errorf("%s: X-A %q, direct %q", prefer, got, direct.values("X-A"))
		}
		if string(job.body) != "p" || !strings.HasPrefix(job.line(), "POST /job/x ") {
			t.Errorf("%s: %q body %q", prefer, job.line(), job.body)
		}
	}
}
