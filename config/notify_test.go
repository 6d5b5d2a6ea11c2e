package config

import (
	"strings"
	"testing"
	"time"
)

const notifyRoute = `
routes:
  - {name: a, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`

func TestNotifyDefaultsAndEnv(t *testing.T) {
	cfg, err := Parse([]byte(notifyRoute+"notify: {webhook: \"${HOOK}\"}\n"),
		Source{Environ: []string{"HOOK=https://hooks.example/T0/s3cr3t"}})
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Notify
	if n.Webhook != "https://hooks.example/T0/s3cr3t" {
		t.Errorf("webhook %q, want the expanded ${HOOK}", n.Webhook)
	}
	if n.CooldownThreshold.D() != 30*time.Second || n.DedupWindow.D() != 10*time.Minute || n.MaxPerMinute != 10 {
		t.Errorf("defaults %+v", n)
	}
	b, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cr3t") || !strings.Contains(string(b), "${HOOK}") {
		t.Errorf("/config must show the reference, not the URL:\n%s", b)
	}
}

func TestNotifyLiteralWebhookIsRedacted(t *testing.T) {
	cfg, err := Parse([]byte(notifyRoute+"notify: {webhook: \"https://hooks.example/T0/s3cr3t\"}\n"), Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cr3t") || !strings.Contains(string(b), Redacted) {
		t.Errorf("a literal webhook URL must be redacted:\n%s", b)
	}
}

func TestNotifyValidation(t *testing.T) {
	tests := []struct {
		name, yaml, path string
	}{
		{"not http", `notify: {webhook: "ftp://hooks.example/s3cr3t"}`, "notify.webhook"},
		{"relative", `notify: {webhook: "/s3cr3t"}`, "notify.webhook"},
		{"no host", `notify: {webhook: "https:///s3cr3t"}`, "notify.webhook"},
		{"zero threshold", `notify: {cooldown_threshold: 0}`, "notify.cooldown_threshold"},
		{"zero dedup window", `notify: {dedup_window: 0}`, "notify.dedup_window"},
		{"no alerts per minute", `notify: {max_per_minute: 0}`, "notify.max_per_minute"},
		{"unknown key", `notify: {webhok: "https://x/"}`, "notify.webhok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(notifyRoute+tt.yaml+"\n"), Source{Environ: []string{}})
			if err == nil || !strings.Contains(err.Error(), tt.path) {
				t.Fatalf("err = %v, want one at %s", err, tt.path)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error echoes the webhook URL: %v", err)
			}
		})
	}
}
