package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

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
// The cookie is HttpOnly (the page's script cannot read it), SameSite=
// Strict (other sites cannot make the browser send it), Secure when the
// admin listener itself serves TLS, and lasts sessionMaxAge: its value is
// the time it was issued and an HMAC of that time keyed by the token,
// never the token itself. A session older than sessionMaxAge, issued in
// the future, altered in any byte, or made for another token (changing
// admin.token invalidates every session) is no session: / shows the
// sign-in form and /status answers 401. Only GET /, GET /status and the
// sign-in accept it: /reload, /config and /metrics still need the bearer
// token. Without admin.token everything is open, as for every admin
// endpoint. Browsers send the cookie to every port of the host, the agent
// listener's included: buildOutbound keeps it from upstreams.
const statusCookie = "ballast_admin"

const (
	// sessionMaxAge is how long a session lasts after the sign-in; the
	// browser then signs in again.
	sessionMaxAge = 12 * time.Hour
	// sessionSkew is how far in the future a session's issue time may be
	// (the wall clock stepped back since it was issued).
	sessionSkew = time.Minute
)

// sessionValue is the cookie value for token, issued at issued (Unix
// seconds): "<issued>.<hex HMAC-SHA256 of issued, keyed by token>".
func sessionValue(token string, issued int64) []byte {
	out := strconv.AppendInt(make([]byte, 0, 20+1+hex.EncodedLen(sha256.Size)), issued, 10)
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("ballast admin session v2\x00"))
	mac.Write(out)
	sum := mac.Sum(nil)
	out = append(out, '.')
	return hex.AppendEncode(out, sum)
}

// validSession reports whether ctx carries a session cookie for the
// current admin.token that is still valid at the server clock's now.
func (s *Server) validSession(ctx *fasthttp.RequestCtx) bool {
	token := s.Config().Admin.Token
	c := ctx.Request.Header.Cookie(statusCookie)
	if token == "" || len(c) == 0 {
		return false
	}
	ts, _, ok := bytes.Cut(c, []byte{'.'})
	if !ok || len(ts) > 20 {
		return false
	}
	issued, err := strconv.ParseInt(string(ts), 10, 64)
	if err != nil {
		return false
	}
	age := s.clock.Now().Sub(time.Unix(issued, 0))
	if age >= sessionMaxAge || age < -sessionSkew {
		return false
	}
	return hmac.Equal(c, sessionValue(token, issued))
}

// setSession gives the browser a new session cookie, when a token is set.
func (s *Server) setSession(ctx *fasthttp.RequestCtx) {
	token := s.Config().Admin.Token
	if token == "" {
		return
	}
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(statusCookie)
	c.SetValueBytes(sessionValue(token, s.clock.Now().Unix()))
	c.SetPath("/")
	c.SetMaxAge(int(sessionMaxAge / time.Second))
	c.SetHTTPOnly(true)
	c.SetSameSite(fasthttp.CookieSameSiteStrictMode)
	c.SetSecure(ctx.IsTLS())
	ctx.Response.Header.SetCookie(c)
}

// authorize decides a request to a guarded admin endpoint, and answers
// it when it may not go on: 401 without a valid credential, 429 while
// wrong tokens are over their limit (see adminFailures). session says
// the endpoint also accepts the status page's session cookie.
func (s *Server) authorize(ctx *fasthttp.RequestCtx, session bool) bool {
	if s.Config().Admin.Token == "" || (session && s.validSession(ctx)) {
		return true
	}
	token, presented := bearerToken(ctx)
	switch res, wait := s.checkToken(ctx, token, presented); res {
	case tokenRight:
		return true
	case tokenLimited:
		writeProblem(ctx, problem{Status: fasthttp.StatusTooManyRequests, Reason: ReasonRateLimited, RetryAfter: wait,
			Detail: "too many wrong admin tokens: the admin listener checks no token until the Retry-After"})
	default:
		s.refuseAdmin(ctx)
	}
	return false
}

// refuseAdmin answers 401 the way every admin endpoint does.
func (s *Server) refuseAdmin(ctx *fasthttp.RequestCtx) {
	writeProblem(ctx, problem{Status: fasthttp.StatusUnauthorized, Reason: ReasonBadRequest,
		WWWAuthenticate: `Bearer realm="ballast admin"`,
		Detail:          "the admin endpoints require Authorization: Bearer <admin.token>"})
}

// handleStatusPage serves / on the admin listener: the HTML status page to
// authorized requests, the sign-in form to others (see statusCookie). A
// token the form or the bearer header presents counts toward the limit
// of wrong tokens; while that is exceeded the form is answered 429 with
// Retry-After.
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
		if s.signInRefused(ctx, presented) {
			return
		}
		s.setSession(ctx)
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.Response.Header.Set("Referrer-Policy", "no-referrer")
		ctx.Response.Header.Set("Location", "/") // relative: fasthttp's Redirect would name the Host the client sent
		ctx.SetStatusCode(fasthttp.StatusSeeOther)
		return
	}
	if !ctx.IsPost() && s.validSession(ctx) {
		s.servePage(ctx, fasthttp.StatusOK, s.status.page.Status)
		return
	}
	token, bearer := bearerToken(ctx)
	if ctx.IsPost() || !bearer {
		s.servePage(ctx, fasthttp.StatusUnauthorized, s.status.page.Login)
		return
	}
	if s.signInRefused(ctx, token) {
		return
	}
	s.setSession(ctx) // a bearer-authorized browser keeps a session for /status
	s.servePage(ctx, fasthttp.StatusOK, s.status.page.Status)
}

// signInRefused checks a presented token, answers the sign-in form when
// it is not right or was not checked (429 with Retry-After), and reports
// whether it did.
func (s *Server) signInRefused(ctx *fasthttp.RequestCtx, token []byte) bool {
	res, wait := s.checkToken(ctx, token, true)
	switch res {
	case tokenRight:
		return false
	case tokenLimited:
		s.servePage(ctx, fasthttp.StatusTooManyRequests, s.status.page.Login)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	default:
		s.servePage(ctx, fasthttp.StatusUnauthorized, s.status.page.Login)
	}
	return true
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
