package config

import (
	"encoding/json"
	"strings"
	"unicode"
)

// Redacted is the placeholder that replaces a secret in /config.
const Redacted = "[redacted]"

// sensitiveHeaderWords mark header names whose values are credentials.
var sensitiveHeaderWords = []string{"authorization", "cookie", "key", "token", "secret", "password", "signature"}

// Redacted returns the effective config as JSON with every secret removed:
// a secret written as ${NAME} references (see isReference) is shown as
// written, never the values; any other admin token, Redis password,
// notify.webhook or credential-like header value holds literal text that
// may be secret, and is replaced by "[redacted]" whole.
func (c *Config) Redacted() ([]byte, error) {
	view := c.display
	if view == nil {
		view = c
	}
	cp := *view
	if cp.Admin.Token != "" && !isReference(cp.Admin.Token) {
		cp.Admin.Token = Redacted
	}
	if cp.State.Redis.Password != "" && !isReference(cp.State.Redis.Password) {
		cp.State.Redis.Password = Redacted
	}
	if cp.Notify.Webhook != "" && !isReference(cp.Notify.Webhook) {
		cp.Notify.Webhook = Redacted // the URL carries the webhook's token
	}
	cp.Routes = make([]Route, len(view.Routes))
	for i, r := range view.Routes {
		r.Headers.Set = redactHeaders(r.Headers.Set)
		if len(r.Fallbacks) > 0 {
			fbs := make([]Fallback, len(r.Fallbacks))
			for j, f := range r.Fallbacks {
				f.Headers.Set = redactHeaders(f.Headers.Set)
				fbs[j] = f
			}
			r.Fallbacks = fbs
		}
		cp.Routes[i] = r
	}
	return json.MarshalIndent(&cp, "", "  ")
}

// redactHeaders returns a copy of set with each literal credential-like
// value replaced by Redacted; set itself, shared with the running config,
// is left alone.
func redactHeaders(set map[string]string) map[string]string {
	if len(set) == 0 {
		return set
	}
	out := make(map[string]string, len(set))
	for k, v := range set {
		if sensitiveHeader(k) && !isReference(v) {
			v = Redacted
		}
		out[k] = v
	}
	return out
}

// isReference reports whether v, as written in the config, is made only
// of ${NAME} references, at most one HTTP authentication scheme before
// them ("Bearer ${KEY}"), and separators (spaces, punctuation): text that
// cannot hold a secret on its own, so /config may show v as written. Any
// other literal letter or digit may be part of a secret ("sk-live${X}",
// "$${KEY}", which is the literal text "${KEY}"), and makes v a literal:
// it is redacted whole.
func isReference(v string) bool {
	refs := 0
	literal := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] == '$' && i+1 < len(v) {
			switch v[i+1] {
			case '$': // ExpandEnv's escape of a literal $
				literal = append(literal, '$')
				i++
				continue
			case '{':
				if end := strings.IndexByte(v[i+2:], '}'); end >= 0 && validEnvName(v[i+2:i+2+end]) {
					refs++
					literal = append(literal, ' ')
					i += 2 + end
					continue
				}
			}
		}
		literal = append(literal, v[i])
	}
	if refs == 0 {
		return false
	}
	rest := strings.TrimLeft(string(literal), " \t")
	if scheme, after, ok := strings.Cut(rest, " "); ok && authScheme(scheme) {
		rest = after
	}
	return !strings.ContainsFunc(rest, func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) })
}

// authSchemes are the HTTP authentication schemes (IANA's registry, and
// the common Token and ApiKey) a credential may start with, in lower case.
var authSchemes = []string{"basic", "bearer", "digest", "dpop", "negotiate", "ntlm", "oauth", "token", "apikey"}

func authScheme(word string) bool {
	for _, s := range authSchemes {
		if strings.EqualFold(word, s) {
			return true
		}
	}
	return false
}

func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	for _, w := range sensitiveHeaderWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
