package proxy_test

// Three gaps the earlier parsing audits left in ballast's parsers of
// outside input, probed end to end against loopback servers: the Prefer
// header's quoted strings (RFC 7240), the server-sent event format usage
// accounting reads (WHATWG HTML §9.2.6: lone CR line ends, "data" lines
// without a colon), and a bare-LF head pipelined behind a good request.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// TestParsing10Audit_PreferQuotedComma: a comma inside a quoted
// parameter value of Prefer does not end the preference (RFC 7240 §2,
// RFC 9110 §5.6.4). ballast split the header at every comma, so a
// quoted string holding "respond-async" or "wait=N" started a job or set
// a wait the agent never asked for.
func TestParsing10Audit_PreferQuotedComma(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "result")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: j, match: {path_prefix: /j/}, upstream: %q, async: {enabled: true}}
`, up))
	tests := []struct {
		name, prefer string
		status       int    // 200: answered in the call; 202: a job
		applied      string // Preference-Applied
	}{
		{"the brief's example: async and wait, a comma quoted between", `respond-async, foo="a,b", wait=10`, 200, "respond-async, wait=10"},
		{"respond-async only quoted", `return=minimal; note="x, respond-async, y"`, 200, ""},
		{"respond-async quoted as a preference's value", `foo="a,respond-async,b"`, 200, ""},
		{"wait only quoted: the job is not waited for", `respond-async, foo="a, wait=10, b"`, 202, "respond-async"},
		{"an escaped quote does not end the quoted string", `respond-async, foo="a\", wait=10, b"`, 202, "respond-async"},
		{"a quoted wait before the real one", `respond-async, foo="a, wait=1, b", wait=10`, 200, "respond-async, wait=10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "POST", b.base+"/j/x", "p", "Prefer", tt.prefer)
			if resp.StatusCode != tt.status {
				t.Fatalf("Prefer: %s: %d %q, want %d", tt.prefer, resp.StatusCode, body, tt.status)
			}
			if tt.status == 200 && body != "result" {
				t.Errorf("Prefer: %s: body %q, want the upstream's", tt.prefer, body)
			}
			if got := resp.Header.Get("Preference-Applied"); got != tt.applied {
				t.Errorf("Prefer: %s: Preference-Applied %q, want %q", tt.prefer, got, tt.applied)
			}
		})
	}
}

// TestParsing10Audit_StreamUsageLineEnds: usage accounting reads a
// server-sent event stream as the WHATWG format defines it. A stream
// whose lines end at a lone CR was one long line to ballast, so no usage
// was read and a tokens_per_minute reservation kept its estimate; a
// "data" line without a colon is an empty data line. A CRLF whose CR and
// LF come in two writes of the upstream is one line end (else an event of
// several data lines would be cut in two, neither half JSON).
func TestParsing10Audit_StreamUsageLineEnds(t *testing.T) {
	const (
		start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\n"
		delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef\"}}\n\n"
		end   = "event: message_delta\ndata: {\"type\":\"message_delta\",\n" +
			"data: \"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	)
	// stream is an Anthropic stream of n deltas, its lines ended by eol.
	stream := func(eol string, n int) []string {
		events := []string{start}
		for range n {
			events = append(events, delta)
		}
		return withEOL(append(events, end), eol)
	}
	// splitCRLF cuts the writes between each CR and its LF.
	splitCRLF := func(events []string) []string {
		var writes []string
		for _, e := range events {
			writes = append(writes, strings.SplitAfter(e, "\r")...)
		}
		return writes
	}
	// colonless ends every event with a "data" line and starts the stream
	// with an event of only one.
	colonless := func(events []string) []string {
		out := []string{"data\n\n"}
		for _, e := range events {
			out = append(out, strings.ReplaceAll(e, "\n\n", "\ndata\n\n"))
		}
		return out
	}
	tests := []struct {
		name   string
		writes []string
	}{
		{name: "lone CR (read whole)", writes: stream("\r", 3)},
		{name: "lone CR (head and tail)", writes: stream("\r", 400)},
		{name: "CRLF, CR and LF in separate writes", writes: splitCRLF(stream("\r\n", 3))},
		{name: "CRLF split, head and tail", writes: splitCRLF(stream("\r\n", 400))},
		{name: "colon-less data lines", writes: colonless(stream("\n", 3))},
		{name: "colon-less data lines, lone CR", writes: withEOL(colonless(stream("\n", 3)), "\r")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for _, s := range tt.writes {
					_, _ = io.WriteString(w, s)
					w.(http.Flusher).Flush()
				}
			})
			b := startBallastClock(t, policy.NewFakeClock(time.Now()), fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {unsafe_methods: true}
    rate_limit: {tokens_per_minute: 2000, max_wait: 0s}
`, up))
			resp, body := do(t, "POST", b.base+"/v1/messages", `{"model":"m","stream":true,"max_tokens":100,"messages":[]}`)
			if want := strings.Join(tt.writes, ""); resp.StatusCode != 200 || body != want {
				t.Fatalf("stream: %d, %d bytes of %d", resp.StatusCode, len(body), len(want))
			}
			// A probe larger than the bucket is refused with the tokens
			// left: 2000 − the 100 estimated until the stream's usage (950)
			// settles the reservation.
			left := func() string {
				resp, _ := do(t, "POST", b.base+"/v1/messages", `{"model":"m","max_tokens":1000000,"messages":[]}`)
				if resp.StatusCode != 429 {
					t.Fatalf("probe: %d", resp.StatusCode)
				}
				f := resp.Header.Get("RateLimit")
				if i := strings.Index(f, "r="); i >= 0 {
					f, _, _ = strings.Cut(f[i+2:], ";")
				}
				return f
			}
			got := left()
			for deadline := time.Now().Add(5 * time.Second); got != "1050" && time.Now().Before(deadline); got = left() {
				time.Sleep(5 * time.Millisecond) // polling for the settlement, bounded
			}
			if got != "1050" {
				t.Errorf("tokens left after a stream that used 950 of 2000: %s, want 1050 (1900: its usage was not read, the estimate stands)", got)
			}
		})
	}
}

// TestParsing10Audit_PipelinedBareLFHead: a request head that a bare LF
// ended, pipelined in the same write right behind a good CRLF request,
// gets the same prompt 400 as a lone one (parsing9_audit_test.go), after
// the good request's answer. The head watcher stopped at the first head's
// CRLF CRLF, so the second, already buffered, went unwatched and ballast
// waited for server.read_timeout. Bytes that only look like such a head
// inside a request's body are not refused.
func TestParsing10Audit_PipelinedBareLFHead(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
	})
	b := startBallast(t, fmt.Sprintf(`
server: {read_timeout: 20s}
routes: [{name: tool, match: {path_prefix: /}, upstream: %q}]
`, up))
	// send writes raw in one write and reads the answers Go's parser
	// finds, until the connection closes or want answers came.
	send := func(t *testing.T, raw string, want int) (statuses []int, bodies []string) {
		t.Helper()
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		for len(statuses) < want {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("%q: after %d answers %v, no more within 5s (server.read_timeout is 20s)", raw, len(statuses), statuses)
				}
				break
			}
			body, _ := io.ReadAll(resp.Body)
			statuses, bodies = append(statuses, resp.StatusCode), append(bodies, string(body))
		}
		return statuses, bodies
	}
	const good = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tt := range []struct {
		name, raw string
	}{
		{"LF lines", good + "GET /bad HTTP/1.1\nHost: x\n\n"},
		{"CRLF lines, LF blank line", good + "GET /bad HTTP/1.1\r\nHost: x\r\n\n"},
		{"behind two good requests", good + good + "GET /bad HTTP/1.1\nHost: x\n\n"},
		{"with a body", good + "POST /bad HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			goods := strings.Count(tt.raw, good)
			statuses, bodies := send(t, tt.raw, goods+1)
			if len(statuses) != goods+1 {
				t.Fatalf("answers %v, want %d × 200 then 400", statuses, goods)
			}
			for i := range goods {
				if statuses[i] != 200 || bodies[i] != "GET /ok 0" {
					t.Errorf("answer %d: %d %q, want 200 from the upstream", i, statuses[i], bodies[i])
				}
			}
			if statuses[goods] != 400 || !strings.Contains(bodies[goods], "bare LF") {
				t.Errorf("the bare-LF request: %d %q, want 400 naming the bare LF", statuses[goods], bodies[goods])
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answered after %v", d)
			}
		})
	}
	t.Run("such bytes in a body are a body", func(t *testing.T) {
		fake := "GET /bad HTTP/1.1\nHost: x\n\n"
		raw := fmt.Sprintf("POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(fake), fake) + good
		statuses, bodies := send(t, raw, 2)
		if len(statuses) != 2 || statuses[0] != 200 || statuses[1] != 200 ||
			bodies[0] != fmt.Sprintf("POST /body %d", len(fake)) || bodies[1] != "GET /ok 0" {
			t.Errorf("answers %v %q, want 200 for the POST and the GET after it", statuses, bodies)
		}
	})
}

// withEOL ends the lines of events at eol instead of LF.
func withEOL(events []string, eol string) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = strings.ReplaceAll(e, "\n", eol)
	}
	return out
}
