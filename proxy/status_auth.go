package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"

	"github.com/valyala/fasthttp"
)

// The status page and /status accept, besides the admin bearer token, a
// session cookie, so a browser can use them:
//
//   - GET /?token=<admin.token>, or the sign-in form (POST / with token),
//     checks the token, sets the cookie and redirects to / (so the token
//     leaves the address bar);
//   - GET / with the bearer header also sets it;
//   - the page's script then fetches /status, and the browser sends the
//     cookie along (same origin).
//
// The cookie is HttpOnly (the page's script cannot read it) and
// SameSite=Strict (other sites cannot make the browser send it). Its value
// is an HMAC of a fixed label keyed by the token, never the token itself;
// changing admin.token invalidates it. Only GET /, GET /status and the
// sign-in accept it: /reload, /config and /metrics still need the bearer
// token. Without admin.token everything is open, as for every admin
// endpoint. Browsers send the cookie to every port of the host, the agent
// listener's included: buildOutbound keeps it from upstreams.
const statusCookie = "ballast_admin"

// sessionValue is the cookie value for token.
func sessionValue(token string) []byte {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("ballast admin session v1"))
	sum := mac.Sum(nil)
	out := make([]byte, hex.EncodedLen(len(sum)))
	hex.Encode(out, sum)
	return out
}

// statusAuthorized accepts the bearer token or the session cookie.
func (s *Server) statusAuthorized(ctx *fasthttp.RequestCtx) bool {
	if s.adminAuthorized(ctx) {
		return true
	}
	c := ctx.Request.Header.Cookie(statusCookie)
	return len(c) > 0 && subtle.ConstantTimeCompare(c, sessionValue(s.Config().Admin.Token)) == 1
}

// tokenMatches compares a presented token with admin.token in constant time.
func (s *Server) tokenMatches(got []byte) bool {
	want := s.Config().Admin.Token
	return want != "" && subtle.ConstantTimeCompare(got, []byte(want)) == 1
}

// setSession gives the browser the session cookie, when a token is set.
func (s *Server) setSession(ctx *fasthttp.RequestCtx) {
	token := s.Config().Admin.Token
	if token == "" {
		return
	}
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(statusCookie)
	c.SetValueBytes(sessionValue(token))
	c.SetPath("/")
	c.SetHTTPOnly(true)
	c.SetSameSite(fasthttp.CookieSameSiteStrictMode)
	c.SetSecure(ctx.IsTLS())
	ctx.Response.Header.SetCookie(c)
}

// refuseAdmin answers 401 the way every admin endpoint does.
func (s *Server) refuseAdmin(ctx *fasthttp.RequestCtx) {
	writeProblem(ctx, problem{Status: fasthttp.StatusUnauthorized, Reason: ReasonBadRequest,
		WWWAuthenticate: `Bearer realm="ballast admin"`,
		Detail:          "the admin endpoints require Authorization: Bearer <admin.token>"})
}

// handleStatusPage serves / on the admin listener: the HTML status page to
// authorized requests, the sign-in form to others (see statusCookie).
func (s *Server) handleStatusPage(ctx *fasthttp.RequestCtx) {
	var presented []byte
	switch {
	case ctx.IsPost():
		presented = ctx.PostArgs().Peek("token")
	case ctx.IsGet() || ctx.IsHead():
		presented = ctx.QueryArgs().Peek("token")
	default:
		writeProblem(ctx, problem{Status: fasthttp.StatusMethodNotAllowed, Reason: ReasonBadRequest, Allow: "GET, HEAD, POST", Detail: "use GET /"})
		return
	}
	if s.Config().Admin.Token == "" { // open admin listener: nothing to sign in to
		if ctx.IsPost() {
			ctx.Response.Header.Set("Location", "/")
			ctx.SetStatusCode(fasthttp.StatusSeeOther)
			return
		}
		s.servePage(ctx, fasthttp.StatusOK, s.status.page.Status)
		return
	}
	if len(presented) > 0 {
		if !s.tokenMatches(presented) {
			s.servePage(ctx, fasthttp.StatusUnauthorized, s.status.page.Login)
			return
		}
		s.setSession(ctx)
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.Response.Header.Set("Referrer-Policy", "no-referrer")
		ctx.Response.Header.Set("Location", "/") // relative: fasthttp's Redirect would name the Host the client sent
		ctx.SetStatusCode(fasthttp.StatusSeeOther)
		return
	}
	if ctx.IsPost() || !s.statusAuthorized(ctx) {
		s.servePage(ctx, fasthttp.StatusUnauthorized, s.status.page.Login)
		return
	}
	if len(ctx.Request.Header.Peek("Authorization")) > 0 {
		s.setSession(ctx) // a bearer-authorized browser keeps a session for /status
	}
	s.servePage(ctx, fasthttp.StatusOK, s.status.page.Status)
}

func (s *Server) servePage(ctx *fasthttp.RequestCtx, status int, html []byte) {
	h := &ctx.Response.Header
	ctx.SetStatusCode(status)
	h.SetContentType("text/html; charset=utf-8")
	h.Set("Content-Security-Policy", s.status.page.CSP)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	ctx.SetBody(html)
}
