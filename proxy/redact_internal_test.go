package proxy

import (
	"strings"
	"testing"
)

func TestRedactQuotedRequests(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"no request bytes", `error when serving connection "127.0.0.1:1"<->"127.0.0.1:2": timeout`,
			`error when serving connection "127.0.0.1:1"<->"127.0.0.1:2": timeout`},
		{"request bytes quoted", `connection "a"<->"b": cannot find whitespace in the first line of request "GET /x\r\nAuthorization: Bearer sk-1\r\n\r\n": buffer size=65`,
			`connection "a"<->"b": cannot find whitespace in the first line of request "<request bytes not shown>": buffer size=65`},
		{"escaped quote inside", `request "GET /\"x\"\nAuthorization: k": size=3`, `request "<request bytes not shown>": size=3`},
		{"unterminated", `request "GET /\nAuth`, `request "GET /\nAuth`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redactQuotedRequests(tt.in); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// FuzzRedactQuotedRequests: no panic, and no complete quoted string that
// spans lines survives.
func FuzzRedactQuotedRequests(f *testing.F) {
	f.Add(`request "GET /x\r\nAuthorization: Bearer sk\r\n": size=1`)
	f.Add(`"a"<->"b": "\"\n"`)
	f.Fuzz(func(t *testing.T, msg string) {
		out := redactQuotedRequests(msg)
		if !strings.Contains(msg, `\n`) && out != msg {
			t.Fatalf("changed a message without request bytes: %q -> %q", msg, out)
		}
		if strings.Contains(out, `\nAuthorization`) && strings.Count(out, `"`) > strings.Count(msg, `"`) {
			t.Fatalf("%q -> %q", msg, out)
		}
	})
}
