package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/rawio"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/pprofhandler"
)

// adminParseError answers a request the admin listener could not read,
// as fasthttp's own handler does (431, 408, 400), except one whose head
// was still arriving when Shutdown stopped waiting (rawio.ErrHalted):
// 503 shutting_down.
func adminParseError(ctx *fasthttp.RequestCtx, err error) {
	var ne net.Error
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, rawio.ErrHalted):
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown,
			Detail: "ballast is shutting down, and its drain ran out of time before the request arrived"})
	case errors.As(err, &small):
		ctx.Error("Too big request header", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &ne) && ne.Timeout():
		ctx.Error("Request timeout", fasthttp.StatusRequestTimeout)
	default:
		ctx.Error("Error when parsing request", fasthttp.StatusBadRequest)
	}
}

// pprofPrefix is where the admin listener serves Go's runtime profiles.
const pprofPrefix = "/debug/pprof/"

// handleAdmin serves the admin listener. /healthz and /readyz are open (for
// probes); every other endpoint requires the bearer token when admin.token
// is set (authorize, which limits wrong tokens), and without one answers
// only local requests (foreignAdminRequest).
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
	if !s.authorize(ctx, false) {
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
		if strings.HasPrefix(path, pprofPrefix) {
			// Go's runtime profiles, as net/http/pprof serves them:
			// `go tool pprof http://127.0.0.1:9901/debug/pprof/profile`
			// profiles ballast under real traffic, and that profile, saved
			// as cmd/ballast/default.pgo, is what a PGO build optimizes for.
			pprofhandler.PprofHandler(ctx)
			return
		}
		writeProblem(ctx, problem{Status: fasthttp.StatusNotFound, Reason: ReasonNoRoute,
			Detail: "the admin listener serves /, /status, /healthz, /readyz, /metrics, /config, /reload and /debug/pprof/"})
	}
}

// bearerToken returns the token of the request's Authorization header,
// and whether the request presented one at all: a header of another
// scheme, or a bearer header without a token, is a wrong token. The
// scheme is case-insensitive (RFC 9110 §11.1).
func bearerToken(ctx *fasthttp.RequestCtx) (token []byte, presented bool) {
	h := ctx.Request.Header.Peek("Authorization")
	if len(h) == 0 {
		return nil, false
	}
	const scheme = "bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(string(h[:len(scheme)]), scheme) {
		return nil, true
	}
	return bytes.TrimLeft(h[len(scheme):], " "), true
}

// tokenCheck is what checkToken found.
type tokenCheck int

const (
	tokenMissing tokenCheck = iota // nothing presented
	tokenWrong
	tokenLimited // not checked: too many wrong tokens (see adminFailures)
	tokenRight
)

// checkToken compares a token the request presented with admin.token, in
// time that depends on neither's content nor length (both are hashed
// first), under the limit of wrong tokens. With no admin.token every
// request is right; a request that presents no token is tokenMissing,
// and costs nothing.
func (s *Server) checkToken(ctx *fasthttp.RequestCtx, got []byte, presented bool) (tokenCheck, time.Duration) {
	want := s.Config().Admin.Token
	if want == "" {
		return tokenRight, 0
	}
	if !presented {
		return tokenMissing, 0
	}
	wait, ok, first := s.adminFails.take(s.clock.Now())
	if !ok {
		if first {
			s.log.Warn("admin: too many wrong admin tokens; refusing every token until the limit has room",
				"remote_addr", ctx.RemoteAddr().String(), "retry_after", wait.Round(time.Millisecond).String())
		}
		return tokenLimited, wait
	}
	g, w := sha256.Sum256(got), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(g[:], w[:]) == 1 {
		s.adminFails.give()
		return tokenRight, 0
	}
	return tokenWrong, 0
}

// Wrong admin tokens are limited, so that whoever reaches the admin
// listener (a web page by DNS rebinding, a host on the network when
// admin.listen is beyond loopback) cannot guess the token at speed: the
// failures fill a bucket of adminFailBurst that drains one per
// adminFailEvery. While it is full, every request that presents a token,
// right or wrong (so that a guess learns nothing), is answered 429 with
// Retry-After, until there is room: at most adminFailEvery after the
// wrong tokens stop, so a right token is never shut out for longer. A
// request that presents no token (the sign-in form, /healthz, /readyz)
// and a valid session cookie, which cannot be guessed, are not limited:
// a signed-in status page keeps working through a guessing attack.
// Grafana limits failed logins per user name; ballast has one token,
// so one bucket for the listener, not one per client address: a
// rebinding page comes from the operator's own address, and a network
// attacker may have many.
const (
	adminFailBurst = 10
	adminFailEvery = time.Second
)

// adminFailures is the bucket of wrong admin tokens. The zero value is an
// empty bucket.
type adminFailures struct {
	mu    sync.Mutex
	spent float64   // failures in the bucket, ≤ adminFailBurst
	at    time.Time // when spent was last drained
	full  bool      // a check was refused since the bucket last had room
}

// take makes room for one token check at now, taken back by give when
// the token is right. Otherwise it reports how long until there is room,
// and first when this is the first refusal since there was.
func (f *adminFailures) take(now time.Time) (wait time.Duration, ok, first bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.After(f.at) {
		f.spent = max(0, f.spent-float64(now.Sub(f.at))/float64(adminFailEvery))
		f.at = now
	}
	if f.spent+1 > adminFailBurst {
		first, f.full = !f.full, true
		return time.Duration((f.spent + 1 - adminFailBurst) * float64(adminFailEvery)), false, first
	}
	f.spent++
	f.full = false
	return 0, true, false
}

// give returns the room take made for a check whose token was right.
func (f *adminFailures) give() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spent = max(0, f.spent-1)
}

func (s *Server) adminReload(ctx *fasthttp.RequestCtx) {
	err := s.Reload()
	ctx.SetContentType("application/json")
	if err == nil {
		ctx.SetBodyString(`{"result":"success"}` + "\n")
		return
	}
	if errors.Is(err, ErrShuttingDown) {
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown,
			Detail: "ballast is shutting down; the config in force stays until it exits"})
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
