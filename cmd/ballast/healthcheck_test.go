package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"testing"
)

func TestDialAddr(t *testing.T) {
	tests := []struct {
		name   string
		listen string
		want   string
		err    bool
	}{
		{name: "every interface, no host", listen: ":9901", want: "127.0.0.1:9901"},
		{name: "every IPv4 interface", listen: "0.0.0.0:9901", want: "127.0.0.1:9901"},
		{name: "every IPv6 interface", listen: "[::]:9901", want: "[::1]:9901"},
		{name: "loopback kept", listen: "127.0.0.1:9901", want: "127.0.0.1:9901"},
		{name: "IPv6 loopback kept", listen: "[::1]:9901", want: "[::1]:9901"},
		{name: "host name kept", listen: "localhost:9901", want: "localhost:9901"},
		{name: "other address kept", listen: "10.0.0.7:9901", want: "10.0.0.7:9901"},
		{name: "no port", listen: "127.0.0.1", err: true},
		{name: "empty port", listen: "127.0.0.1:", err: true},
		{name: "too many colons", listen: "::1:9901", err: true},
		{name: "empty", listen: "", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := dialAddr(tt.listen)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("dialAddr(%q) = %q, %v; want %q, error %v", tt.listen, got, err, tt.want, tt.err)
			}
		})
	}
}

// An admin listener on every IPv6 interface ("[::]:PORT") is checked on
// ::1, which the default fasthttp dialer (IPv4 only) could not reach.
func TestHealthcheckDialsIPv6Loopback(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("no IPv6 loopback on this machine (ballast's CI machines have one): %v", err)
	}
	port := serveOK(t, ln)
	var out, errb bytes.Buffer
	if code := run([]string{"healthcheck", "--admin", "[::]:" + port}, &out, &errb); code != 0 {
		t.Errorf("healthcheck --admin [::]:%s: exit %d, want 0: %s", port, code, errb.String())
	}
}

// serveOK answers every request on ln with 200 "ok" until the test ends,
// standing in for a live admin listener, and returns ln's port.
func serveOK(t *testing.T, ln net.Listener) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}
