package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"net"
	"net/url"
	"strings"

	"github.com/ballast-proxy/ballast/config"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// handleAdmin serves the admin listener. /healthz and /readyz are open (for
// probes); every other endpoint requires the bearer token when admin.token
// is set, and without one answers only local requests (foreignAdminRequest).
func (s *Server) handleAdmin(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	if path != "/healthz" && path != "/readyz" && s.Config().Admin.Token == "" {
		if p, foreign := foreignAdminRequest(ctx); foreign {
			writeProblem(ctx, p)
			return
		}
	}
	switch path {
	case "/healthz":
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok\n")
		return
	case "/readyz":
		ctx.SetContentType("text/plain; charset=utf-8")
		if !s.ready.Load() || s.draining.Load() {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			if s.draining.Load() {
				ctx.SetBodyString("draining\n")
			} else {
				ctx.SetBodyString("not ready\n")
			}
			return
		}
		ctx.SetBodyString("ready\n")
		return
	case "/status": // authorizes itself: bearer token or session cookie
		s.handleStatus(ctx)
		return
	case "/": // the status page, or its sign-in form
		s.handleStatusPage(ctx)
		return
	}
	if !s.adminAuthorized(ctx) {
		writeProblem(ctx, problem{Status: fasthttp.StatusUnauthorized, Reason: ReasonBadRequest,
			WWWAuthenticate: `Bearer realm="ballast admin"`,
			Detail:          "the admin endpoints require Authorization: Bearer <admin.token>"})
		return
	}
	switch path {
	case "/metrics":
		s.metricsHandler()(ctx)
	case "/config":
		b, err := s.Config().Redacted()
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(b)
	case "/reload":
		if !ctx.IsPost() {
			writeProblem(ctx, problem{Status: fasthttp.StatusMethodNotAllowed, Reason: ReasonBadRequest, Allow: "POST", Detail: "use POST /reload"})
			return
		}
		s.adminReload(ctx)
	default:
		writeProblem(ctx, problem{Status: fasthttp.StatusNotFound, Reason: ReasonNoRoute,
			Detail: "the admin listener serves /, /status, /healthz, /readyz, /metrics, /config and /reload"})
	}
}

func (s *Server) adminAuthorized(ctx *fasthttp.RequestCtx) bool {
	token := s.Config().Admin.Token
	if token == "" {
		return true
	}
	want := "Bearer " + token
	got := ctx.Request.Header.Peek("Authorization")
	return subtle.ConstantTimeCompare(got, []byte(want)) == 1
}

func (s *Server) adminReload(ctx *fasthttp.RequestCtx) {
	err := s.Reload()
	ctx.SetContentType("application/json")
	if err == nil {
		ctx.SetBodyString(`{"result":"success"}` + "\n")
		return
	}
	var msgs []string
	for _, e := range config.Problems(err) {
		msgs = append(msgs, e.Error())
	}
	b, _ := json.Marshal(map[string]any{
		"type": problemTypePrefix + "invalid_config", "title": "Invalid config", "status": 422,
		"detail": "the new config was refused; the old one stays in force", "reason": "invalid_config", "errors": msgs,
	})
	ctx.SetStatusCode(fasthttp.StatusUnprocessableEntity)
	ctx.SetContentType("application/problem+json")
	ctx.SetBody(b)
}

func (s *Server) metricsHandler() fasthttp.RequestHandler {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.promHandler == nil {
		s.promHandler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	}
	return s.promHandler
}

// foreignAdminRequest guards an admin listener without a token, which is
// bound to localhost, against web pages in the operator's browser: a page
// that rebinds its own DNS name to 127.0.0.1 reaches the listener with
// that name in Host (DNS rebinding), and a page that posts a form to it
// (POST /reload) sends its own Origin. Only requests addressed to
// localhost or a loopback IP, from no origin or the listener's own, pass.
// A page of another loopback origin is foreign too: ballast's own agent
// listener (http://127.0.0.1:8080) relays whatever HTML an upstream
// answers, and a browser runs it under that origin.
func foreignAdminRequest(ctx *fasthttp.RequestCtx) (problem, bool) {
	if !loopbackHost(string(ctx.Host())) {
		return problem{Status: fasthttp.StatusMisdirectedRequest, Reason: ReasonBadRequest,
			Detail: "the admin listener has no admin.token and answers only requests addressed to localhost or a loopback IP"}, true
	}
	if origin := ctx.Request.Header.Peek("Origin"); len(origin) > 0 {
		scheme := "http"
		if ctx.IsTLS() {
			scheme = "https"
		}
		u, err := url.Parse(string(origin))
		if err != nil || u.Scheme != scheme || !strings.EqualFold(u.Host, string(ctx.Host())) {
			return problem{Status: fasthttp.StatusForbidden, Reason: ReasonBadRequest,
				Detail: "the admin listener has no admin.token and refuses requests from web pages of other origins"}, true
		}
	}
	return problem{}, false
}

// loopbackHost reports whether host ("name" or "name:port", IPv6 in
// brackets) is localhost or a loopback IP.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
