package config

import "net/url"

// Notify sends alert events (a breaker opened, a long cool-down, a spent
// retry budget, an async job that failed for good) as JSON to a webhook.
// Alerts are off unless Webhook is set.
type Notify struct {
	// Webhook is the http or https URL alerts are POSTed to. It is a
	// secret (chat webhooks carry their token in it): write it as
	// ${ENV}. It never appears in logs, /status or /config.
	Webhook string `koanf:"webhook" json:"webhook,omitempty"`
	// CooldownThreshold: a cool-down an upstream asks for that is longer
	// than this raises an alert. Default 30s.
	CooldownThreshold Duration `koanf:"cooldown_threshold" json:"cooldown_threshold"`
	// DedupWindow: alerts of the same kind, route and upstream inside it
	// are sent once; the next one carries the count of those suppressed.
	// Default 10m.
	DedupWindow Duration `koanf:"dedup_window" json:"dedup_window"`
	// MaxPerMinute caps the alerts sent in any minute. Default 10.
	MaxPerMinute int `koanf:"max_per_minute" json:"max_per_minute"`
}

func notifyDefaults() map[string]any {
	return map[string]any{"cooldown_threshold": "30s", "dedup_window": "10m", "max_per_minute": 10}
}

// validate checks the notify block. Messages never echo the webhook URL.
func (n *Notify) validate(path string) []error {
	var errs []error
	if n.Webhook != "" {
		u, err := url.Parse(n.Webhook)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https"):
			errs = append(errs, pathErr(path+".webhook", "must be an http or https URL"))
		case u.Host == "" || u.Hostname() == "":
			errs = append(errs, pathErr(path+".webhook", "has no host"))
		}
	}
	if n.CooldownThreshold <= 0 {
		errs = append(errs, pathErr(path+".cooldown_threshold", "must be positive"))
	}
	if n.DedupWindow <= 0 {
		errs = append(errs, pathErr(path+".dedup_window", "must be positive"))
	}
	if n.MaxPerMinute < 1 || n.MaxPerMinute > 1000 {
		errs = append(errs, pathErr(path+".max_per_minute", "must be between 1 and 1000"))
	}
	return errs
}
