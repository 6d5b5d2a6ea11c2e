package proxy_test

import (
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestAdminEndpoints(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token: "${ADMIN_TOKEN}"}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    headers: {set: {Authorization: "Bearer ${UP_KEY}", X-Api-Key: literal-secret-value, X-Plain: visible}}
`, up), "ADMIN_TOKEN=adm-s3cret", "UP_KEY=sk-live-999")
	c := client(t)
	get(t, c, b.base+"/x")

	for _, path := range []string{"/healthz", "/readyz"} {
		if r, _ := get(t, c, b.admin+path); r.StatusCode != 200 {
			t.Errorf("%s without a token: %d; probes must stay open", path, r.StatusCode)
		}
	}
	for _, path := range []string{"/metrics", "/config"} {
		if r, _ := get(t, c, b.admin+path); r.StatusCode != 401 {
			t.Errorf("%s without the token: %d, want 401", path, r.StatusCode)
		}
		if r, _ := get(t, c, b.admin+path, "Authorization", "Bearer wrong"); r.StatusCode != 401 {
			t.Errorf("%s with a wrong token: %d, want 401", path, r.StatusCode)
		}
	}
	auth := []string{"Authorization", "Bearer adm-s3cret"}
	r, metrics := get(t, c, b.admin+"/metrics", auth...)
	if r.StatusCode != 200 {
		t.Fatalf("/metrics: %d", r.StatusCode)
	}
	for _, want := range []string{
		`ballast_requests_total{code="2xx",route="r"} 1`,
		`ballast_request_duration_seconds_bucket{code="2xx",route="r"`,
		"go_goroutines", "process_cpu_seconds_total",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	r, cfg := get(t, c, b.admin+"/config", auth...)
	if r.StatusCode != 200 {
		t.Fatalf("/config: %d", r.StatusCode)
	}
	for _, secret := range []string{"adm-s3cret", "sk-live-999", "literal-secret-value"} {
		if strings.Contains(cfg, secret) {
			t.Errorf("/config shows the secret %q", secret)
		}
	}
	for _, want := range []string{"${UP_KEY}", "${ADMIN_TOKEN}", `"X-Plain": "visible"`, "[redacted]"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("/config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(b.logs.String(), "sk-live-999") || strings.Contains(b.logs.String(), "adm-s3cret") {
		t.Error("a secret reached the logs")
	}
}

func TestTLSUpstreamWithExtraCA(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "over tls")
	}))
	t.Cleanup(ts.Close)
	caFile := t.TempDir() + "/ca.pem"
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: trusted, match: {path_prefix: /t/}, upstream: %[1]q, ca_file: %[2]q, strip_prefix: true}
  - {name: untrusted, match: {path_prefix: /u/}, upstream: %[1]q, strip_prefix: true}
`, ts.URL, caFile))
	c := client(t)
	if r, body := get(t, c, b.base+"/t/x"); r.StatusCode != 200 || body != "over tls" {
		t.Errorf("with ca_file: %d %q", r.StatusCode, body)
	}
	r, body := get(t, c, b.base+"/u/x")
	if r.StatusCode != 502 || !strings.Contains(body, "certificate") {
		t.Errorf("without the CA the upstream must fail verification: %d %s", r.StatusCode, body)
	}
}

func TestTLSHandshakeThatNeverEndsTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // holds the connection open, never speaks TLS
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: tlshang, match: {path_prefix: /}, upstream: "https://%s", timeouts: {per_try: 300ms, total: 2s}}
`, ln.Addr()))
	start := time.Now()
	resp, body := get(t, client(t), b.base+"/x")
	if resp.StatusCode != 504 || time.Since(start) > 5*time.Second {
		t.Fatalf("status %d after %v: %s; a stuck handshake must hit the per-try deadline", resp.StatusCode, time.Since(start), body)
	}
	waitFor(t, func() bool { return b.metric("ballast_inflight_requests", map[string]string{"route": "tlshang"}) == 0 })
}
