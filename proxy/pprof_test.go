package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestAdminServesProfilesBehindTheToken: /debug/pprof/ on the admin
// listener serves Go's runtime profiles (a CPU profile is gzipped
// protobuf, what `go tool pprof` and a PGO build read), and only with the
// admin token, like /metrics.
func TestAdminServesProfilesBehindTheToken(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token: "${ADMIN_TOKEN}"}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
`, up), "ADMIN_TOKEN=adm-s3cret")
	c := client(t)
	auth := []string{"Authorization", "Bearer adm-s3cret"}

	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if r, _ := get(t, c, b.admin+path); r.StatusCode != 401 {
			t.Errorf("%s without the token: %d, want 401", path, r.StatusCode)
		}
	}
	r, index := get(t, c, b.admin+"/debug/pprof/", auth...)
	if r.StatusCode != 200 || !strings.Contains(index, "goroutine") {
		t.Errorf("/debug/pprof/: %d, %q; want 200 and the index of profiles", r.StatusCode, index)
	}
	r, prof := get(t, c, b.admin+"/debug/pprof/profile?seconds=1", auth...)
	if r.StatusCode != 200 || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
		t.Errorf("/debug/pprof/profile: %d, %d bytes; want 200 and a gzipped profile", r.StatusCode, len(prof))
	}
	if r, body := get(t, c, b.admin+"/debug/pprofx", auth...); r.StatusCode != 404 || !strings.Contains(body, "/debug/pprof/") {
		t.Errorf("/debug/pprofx: %d, %q; want 404 naming /debug/pprof/", r.StatusCode, body)
	}
}
