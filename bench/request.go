package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// The overhead scenario's default request: a model-style chat POST.
const (
	OverheadMethod = "POST"
	OverheadPath   = "/v1/chat/completions"
)

// overheadWorkload is the overhead scenario's one request: method and path
// (defaults OverheadMethod and OverheadPath), with the chat body and its
// content type unless the method is GET or HEAD. A request CheckRequest
// refuses is an ErrLoad error.
func overheadWorkload(method, path string) (Workload, error) {
	if method == "" {
		method = OverheadMethod
	}
	if path == "" {
		path = OverheadPath
	}
	if err := CheckRequest(method, path); err != nil {
		return Workload{}, err
	}
	wl := Workload{Name: "chat", Method: method, Path: path}
	if method != "GET" && method != "HEAD" {
		wl.Body, wl.ContentType = modelBody, "application/json"
	}
	return wl, nil
}

// CheckRequest returns an ErrLoad error unless path starts with / and
// holds no space or control character and method is upper-case letters:
// what the load drivers, wrk included, can send. Empty means the default.
func CheckRequest(method, path string) error {
	if path != "" && (!strings.HasPrefix(path, "/") || strings.ContainsFunc(path, func(r rune) bool { return r <= ' ' || r == 0x7f })) {
		return fmt.Errorf("%w: path %q must start with / and hold no spaces or control characters", ErrLoad, path)
	}
	if strings.ContainsFunc(method, func(r rune) bool { return r < 'A' || r > 'Z' }) {
		return fmt.Errorf("%w: method %q must be upper-case letters", ErrLoad, method)
	}
	return nil
}

// requestLine is "METHOD PATH" of wl, for reports.
func requestLine(wl Workload) string { return wl.Method + " " + wl.Path }

// checkRoute sends wl's request once through the ballast listening on addr
// before anything is measured, and returns an ErrConfig error unless it is
// answered 2xx by the upstream: a run of 404s (no route of config takes
// the request), of any other error answer, or of a route's static_fallback
// (a 2xx marked X-Ballast-Fallback, after the upstream failed) would time
// ballast's refusals and failures, not what the config costs on a request
// it serves. config names the config in the message. It checks this one
// answer; the load drivers class every later one (degradedClass), should
// the upstream fail under load.
func checkRoute(ctx context.Context, addr string, wl Workload, timeout time.Duration, config string) error {
	c := newClient(addr, 1, timeout, nil)
	defer c.CloseIdleConnections()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + wl.Path)
	req.Header.SetMethod(wl.Method)
	if wl.Body != nil {
		req.SetBodyRaw(wl.Body)
		req.Header.SetContentType(wl.ContentType)
	}
	if err := c.DoTimeout(req, resp, timeout); err != nil {
		return fmt.Errorf("%w: ballast (%s) did not answer %s: %w", ErrProcess, config, requestLine(wl), err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	status := resp.StatusCode()
	if fallback := resp.Header.Peek("X-Ballast-Fallback"); len(fallback) > 0 {
		return fmt.Errorf("%w: %s through ballast (%s) was answered %d by the route's static_fallback (X-Ballast-Fallback: %s), not by its upstream, which failed (X-Ballast-Attempts: %s); the run would time that failure",
			ErrConfig, requestLine(wl), config, status, fallback, resp.Header.Peek("X-Ballast-Attempts"))
	}
	if status >= 200 && status < 300 {
		return nil
	}
	// ballast's own answers are problem+json with a reason (proxy/problem.go).
	var p struct{ Reason, Detail string }
	if strings.HasPrefix(string(resp.Header.ContentType()), "application/problem+json") {
		_ = json.Unmarshal(resp.Body(), &p)
	}
	if status == fasthttp.StatusNotFound && p.Reason == "no_route" {
		return fmt.Errorf("%w: no route of %s takes %s (ballast answered 404 no_route: %s); choose a request one of its routes matches with --path and --method (the request goes to %s as its host, so a route with a match.host never takes it)",
			ErrConfig, config, requestLine(wl), p.Detail, addr)
	}
	answer := fmt.Sprint(status)
	if p.Reason != "" {
		answer += " " + p.Reason + ": " + p.Detail
	}
	return fmt.Errorf("%w: %s through ballast (%s) was answered %s, not 2xx; the run would time that answer, not the config's cost on a request it serves",
		ErrConfig, requestLine(wl), config, answer)
}

// requestsTotal matches a ballast_requests_total sample of /metrics and
// captures its route label and value.
var requestsTotal = regexp.MustCompile(`^ballast_requests_total\{(?:.*,)?route="((?:[^"\\]|\\.)*)"(?:,.*)?\} ([0-9.e+]+)$`)

// servedRoute is the name of the route that served the requests ballast
// has answered so far, read from its admin /metrics (with its admin
// token, if any): after checkRoute's one request, the route a run of that
// request measures. It is "" when no route counted a request.
func servedRoute(p *Process, timeout time.Duration) (string, error) {
	body, err := fetchMetrics(p, timeout)
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(body, "\n") {
		m := requestsTotal.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if n, err := strconv.ParseFloat(m[2], 64); err == nil && n > 0 {
			route, err := strconv.Unquote(`"` + m[1] + `"`)
			if err != nil {
				route = m[1]
			}
			return route, nil
		}
	}
	return "", nil
}

// staleLookups matches a ballast_cache_requests_total sample of /metrics
// whose result is stale, and captures its value.
var staleLookups = regexp.MustCompile(`^ballast_cache_requests_total\{(?:.*,)?result="stale"(?:,.*)?\} ([0-9.e+]+)$`)

// staleServed is how many stored answers ballast has served because the
// upstream failed (stale-if-error), over every route, read from its admin
// /metrics: ballast_cache_requests_total{result="stale"}, counted as each
// is served.
func staleServed(p *Process, timeout time.Duration) (int64, error) {
	body, err := fetchMetrics(p, timeout)
	if err != nil {
		return 0, err
	}
	var n float64
	for line := range strings.SplitSeq(body, "\n") {
		if m := staleLookups.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				return 0, fmt.Errorf("%w: %s: /metrics: %q: %w", ErrProcess, p.Name, line, err)
			}
			n += v
		}
	}
	return int64(n), nil
}

// fetchMetrics is the body of ballast's admin /metrics (with its admin
// token, if any).
func fetchMetrics(p *Process, timeout time.Duration) (string, error) {
	c := newClient(p.Admin, 1, timeout, nil)
	defer c.CloseIdleConnections()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + p.Admin + "/metrics")
	if p.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+p.AdminToken)
	}
	if err := c.DoTimeout(req, resp, timeout); err != nil {
		return "", fmt.Errorf("%w: %s: /metrics: %w", ErrProcess, p.Name, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return "", fmt.Errorf("%w: %s: /metrics answered %d: %.200s", ErrProcess, p.Name, resp.StatusCode(), resp.Body())
	}
	return string(resp.Body()), nil
}
