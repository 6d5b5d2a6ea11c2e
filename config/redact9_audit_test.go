package config

// An audit of what /config (Config.Redacted) shows of a secret that mixes
// literal text with ${NAME} references: the doc comment of isReference
// promised "only references and text that cannot hold a secret", but any
// value containing "${" counted, so the literal bytes of such a secret
// were shown as written.

import (
	"strings"
	"testing"
)

// TestRedact9AuditLiteralSecretBesideReference: the admin token, the Redis
// password and a credential header (notify.webhook below), written with literal secret text next to a
// reference, is shown as [redacted]; written as references only (with an
// authentication scheme, or separators), it is shown as written.
func TestRedact9AuditLiteralSecretBesideReference(t *testing.T) {
	for _, tt := range []struct {
		name, value string
		shown       bool // /config shows the value as written
	}{
		{"literal prefix", "sk-LITERAL${X}", false},
		{"literal suffix", "${X}LITERAL", false},
		{"literal between references", "${X}LITERAL${Y}", false},
		{"escaped dollar is literal text", "$${LITERALNAME}", false},
		{"escaped dollar then a reference", "$$LITERAL${X}", false},
		{"a word before the scheme", "LITERAL Bearer ${X}", false},
		{"scheme with a literal credential part", "Bearer LITERAL${X}", false},
		{"a digit is literal text", "${X}7", false},
		{"reference only", "${X}", true},
		{"bearer scheme", "Bearer ${X}", true},
		{"basic scheme, any case", "basic ${X}", true},
		{"user and password", "${X}:${Y}", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := strings.ReplaceAll(tt.value, `"`, `\"`)
			yaml := `
admin: {token: "` + q + `"}
state: {backend: redis, redis: {address: "127.0.0.1:6379", password: "` + q + `"}}
routes:
  - name: a
    match: {path_prefix: /}
    upstream: http://x
    headers: {set: {X-Api-Key: "` + q + `"}}
`
			cfg, err := Parse([]byte(yaml), Source{Environ: []string{"X=xv", "Y=yv"}})
			if err != nil {
				t.Fatal(err)
			}
			b, err := cfg.Redacted()
			if err != nil {
				t.Fatal(err)
			}
			out := string(b)
			if tt.shown {
				if n := strings.Count(out, `"`+tt.value+`"`); n != 3 {
					t.Errorf("%q is shown %d times, want 3 (token, password, header):\n%s", tt.value, n, out)
				}
				return
			}
			if strings.Contains(out, "LITERAL") || strings.Contains(out, `"${X}7"`) {
				t.Errorf("/config shows a literal secret's bytes:\n%s", out)
			}
			if n := strings.Count(out, `"`+Redacted+`"`); n != 3 {
				t.Errorf("%d fields [redacted], want 3 (token, password, header):\n%s", n, out)
			}
		})
	}
	// notify.webhook: a URL whose literal part holds the webhook's secret
	// path, beside a reference.
	cfg, err := Parse([]byte(`
notify: {webhook: "https://hooks.example/T0/LITERALSECRET/${X}"}
routes: [{name: a, match: {path_prefix: /}, upstream: http://x}]
`), Source{Environ: []string{"X=xv"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "LITERALSECRET") || !strings.Contains(string(b), `"webhook": "`+Redacted+`"`) {
		t.Errorf("notify.webhook with literal secret text:\n%s", b)
	}
}
