package config

import (
	"encoding/json"
	"strings"
)

// Redacted is the placeholder that replaces a secret in /config.
const Redacted = "[redacted]"

// sensitiveHeaderWords mark header names whose values are credentials.
var sensitiveHeaderWords = []string{"authorization", "cookie", "key", "token", "secret", "password", "signature"}

// Redacted returns the effective config as JSON with every secret removed:
// ${NAME} references are shown as written (never their values), and any
// literal admin token or credential-like header value is replaced by
// "[redacted]".
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

// isReference reports whether v is made only of ${NAME} references and
// text that cannot hold a secret on its own (such as "Bearer ").
func isReference(v string) bool { return strings.Contains(v, "${") }

func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	for _, w := range sensitiveHeaderWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
