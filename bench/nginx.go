package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// NginxPath returns the nginx binary on PATH, or "" when there is none.
func NginxPath() string {
	p, err := exec.LookPath("nginx")
	if err != nil {
		return ""
	}
	return p
}

// nginxConfig is a minimal reverse proxy to upstream with keep-alive
// connections both ways and no logging, so it competes on equal terms.
// It runs procs worker processes. With a positive stream, it relays
// answers as they arrive (proxy_buffering off), as nginx must be set up
// in front of an SSE endpoint, and waits up to stream between two reads
// from the upstream when that is above its default 60s
// (proxy_read_timeout), so that it never ends a stream the driver still
// waits for; otherwise it buffers, as nginx does by default. Each worker
// may hold every one of conns agent connections and one upstream
// connection for each (nginxWorkerConnections).
func nginxConfig(dir, listen, upstream string, procs, conns int, stream time.Duration) string {
	buffering := ""
	if stream > 0 {
		buffering = "\n            proxy_buffering off;"
	}
	if stream > nginxDefaultReadTimeout {
		secs := (stream + time.Second - 1) / time.Second
		buffering += fmt.Sprintf("\n            proxy_read_timeout %ds;", secs)
	}
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes %[4]d;
worker_rlimit_nofile %[6]d;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections %[6]d; multi_accept on; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream bench { server %[3]s; keepalive 256; keepalive_requests 1000000; }
    server {
        listen %[2]s;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;%[5]s
        }
    }
}
`, dir, listen, upstream, procs, buffering, nginxWorkerConnections(conns))
}

// nginxWorkerConnections is a worker's worker_connections (and its
// worker_rlimit_nofile) for conns agent connections: one to the agent and
// one upstream each, and room for nginx's own accounting (at twice conns
// it was already "reusing connections", closing agents' unanswered ones,
// with 2,200 requests held); at least the 4096 of before, so that a worker
// never refuses a connection the load driver opens (about 2,000 streams
// at once did not fit in 4096).
func nginxWorkerConnections(conns int) int {
	return max(4096, 3*conns+64)
}

// nginxDefaultReadTimeout is nginx's proxy_read_timeout by default.
const nginxDefaultReadTimeout = 60 * time.Second

// startNginx writes a config into dir and runs nginx in the foreground
// (nginxConfig).
func startNginx(ctx context.Context, exe, dir, upstream string, procs, conns int, stream time.Duration) (*Process, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(dir, listen, upstream, procs, conns, stream)), 0o600); err != nil {
		return nil, fmt.Errorf("%w: nginx: %w", ErrProcess, err)
	}
	p, err := startProcess("nginx", exe, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, err
	}
	p.Addr = listen
	if err := p.awaitHTTP(ctx, listen, "/", false, 10*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}
