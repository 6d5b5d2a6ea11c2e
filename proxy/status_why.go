package proxy

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/valyala/fasthttp"
)

// The why of /status: the request path keeps a failure as a
// supervise.Fault (an error value, a status, a shortage: a copy, never a
// string built), and these functions word it when /status is read, with
// the words the agent's problem detail uses.

// maxWhy bounds a worded failure: a line on the status page, not a log.
const maxWhy = 240

// addressWord stands for a network address /status leaves out.
const addressWord = "[address]"

var _ supervise.Describer = faultText

// faultText words f for /status and the status page (an upstream's
// last_failure.reason, a failure's detail): ballast's shortage as the
// agent's 503 says it, a transport error as its 502 or 504 does (without
// "the upstream NAME": /status names it beside), a validation failure by
// its check, an answer by its status and class. The text then goes
// through whySafe: it names no network address and quotes nothing the
// peer sent. "" when f says nothing beyond its class.
func faultText(f *supervise.Fault) string {
	var text string
	var vf *validate.Failure
	switch {
	case f.Short != policy.ShortageNone:
		text = shortageText(f.Short, f.Err)
	case errors.As(f.Err, &vf):
		text = invalidText(vf)
	case f.Err != nil:
		text, _ = transportText(f.Err)
	case f.Status != 0:
		text = answerText(f.Class, f.Status)
	default:
		return ""
	}
	return whySafe(text)
}

// lastFailure is an upstream's LastFailure on /status, from the fault its
// window kept last.
func lastFailure(f *supervise.Fault) *supervise.LastFailure {
	lf := &supervise.LastFailure{Time: f.Time, Class: f.Class.String(), Status: f.Status, Reason: faultText(f)}
	if f.Cause != policy.CauseNone {
		lf.Cause = f.Cause.String()
	}
	if lf.Reason == "" {
		lf.Reason = lf.Class
	}
	if f.Short != policy.ShortageNone {
		lf.ShortOf, lf.Hint = f.Short.String(), shortageHint(f.Short)
	}
	return lf
}

// invalidText words a validation failure by its check and, for a refusal
// in a 200 (validate.Failure.Denial), what was refused; never by its
// Detail, which quotes the upstream's body.
func invalidText(f *validate.Failure) string {
	switch f.Denial {
	case validate.DenialAuth:
		return "the upstream refused the credentials (an error in a " + strconv.Itoa(fasthttp.StatusOK) + " answer)"
	case validate.DenialQuota:
		return "the upstream's quota or balance is spent (an error in a " + strconv.Itoa(fasthttp.StatusOK) + " answer)"
	}
	return "the answer failed validation (" + f.Check + ")"
}

// answerText words a failed answer by its class and status.
func answerText(c policy.Class, status int) string {
	code := strconv.Itoa(status)
	if msg := fasthttp.StatusMessage(status); msg != "Unknown Status Code" {
		code += " " + msg
	}
	switch c {
	case policy.Auth:
		return "the upstream refused the credentials: " + code
	case policy.Quota:
		return "the upstream's quota or balance is spent: " + code
	case policy.RateLimited:
		return "the upstream is limiting the rate: " + code
	}
	return "the upstream answered " + code
}

// transportText words a transport error as the agent's problem detail
// does after "the upstream NAME ": a timeout by what ran out (timedOut
// is true, and the agent gets 504), anything else by agentErrorText.
func transportText(err error) (text string, timedOut bool) {
	var ne net.Error
	if !errors.Is(err, fasthttp.ErrTimeout) && !errors.Is(err, fasthttp.ErrDialTimeout) && !(errors.As(err, &ne) && ne.Timeout()) {
		return agentErrorText(err), false
	}
	if errors.Is(err, policy.ErrTLSHandshake) {
		return "did not complete the TLS handshake in time (timeouts.connect, within the attempt's per_try)", true
	}
	return "did not answer within the deadline", true
}

// whySafe makes an error's text fit for /status, which anyone holding
// the admin token reads and which must hold no address or secret, even
// where agentErrorText let one through: an IP address, with or without
// a port, becomes [address]; a quoted string (what fasthttp quotes of
// the bytes a peer sent: a header, a status line) becomes "…"; a parse
// error's buffer contents are cut; and the text is cut to maxWhy bytes.
func whySafe(s string) string {
	if i := strings.Index(s, "buffer size="); i >= 0 {
		s = strings.TrimRight(s[:i], ":, ")
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '"':
			end := closingQuote(s, i+1)
			b.WriteString(`"…"`)
			if end < 0 {
				i = len(s)
			} else {
				i = end + 1
			}
		case addressByte(c):
			j := i
			for j < len(s) && addressByte(s[j]) {
				j++
			}
			b.WriteString(maskAddress(s[i:j]))
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	s = b.String()
	if len(s) > maxWhy {
		cut := maxWhy
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// closingQuote is the index of the quote that ends a Go-quoted string
// whose body starts at from, or -1 when it does not end.
func closingQuote(s string, from int) int {
	for i := from; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// addressByte reports whether c can be part of an IP address, a port, or
// the brackets around an IPv6 address.
func addressByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':' || c == '[' || c == ']'
}

// maskAddress replaces run, a run of addressBytes, with addressWord when
// it is an IP address or an IP address and port, keeping the separators
// around it ("127.0.0.1:80:" is "[address]:"). Anything else is kept.
func maskAddress(run string) string {
	core := strings.TrimRight(run, ":.")
	tail := run[len(core):]
	if !strings.ContainsAny(core, "0123456789") {
		return run
	}
	if _, err := netip.ParseAddrPort(core); err == nil {
		return addressWord + tail
	}
	if _, err := netip.ParseAddr(strings.Trim(core, "[]")); err == nil {
		return addressWord + tail
	}
	return run
}
