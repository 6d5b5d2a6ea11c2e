package supervise

import (
	"strconv"
	"strings"
	"time"
)

// Kind is what an alert is about.
type Kind string

// The alert kinds.
const (
	// KindBreakerOpen: an upstream's circuit breaker opened.
	KindBreakerOpen Kind = "breaker_open"
	// KindCooldown: an upstream asked ballast to pause for longer than
	// notify.cooldown_threshold.
	KindCooldown Kind = "cooldown"
	// KindBudgetExhausted: a retry was refused because the upstream's retry
	// budget was spent.
	KindBudgetExhausted Kind = "budget_exhausted"
	// KindJobFailed: an async job failed for good.
	KindJobFailed Kind = "job_failed"
	// KindStateFailing: the state store failed a request (503
	// state_unavailable: it could not be reached or written, or it is
	// full), or the state file refused a write made after the agent had
	// its answer (a full disk, an I/O error).
	KindStateFailing Kind = "state_failing"
)

// Event is the JSON body POSTed to notify.webhook.
type Event struct {
	// Source is always "ballast".
	Source string `json:"source"`
	Kind   Kind   `json:"kind"`
	Route  string `json:"route,omitempty"`
	// Upstream is host[:port]; never a URL with a path or credentials.
	Upstream string `json:"upstream,omitempty"`
	// Host names the replica that raised it (its hostname: a pod's name
	// in Kubernetes), so that a fleet's alerts say whose they are; empty
	// when unknown.
	Host string    `json:"host,omitempty"`
	Time time.Time `json:"time"`
	// Detail is a short human explanation (numbers and names only).
	Detail string `json:"detail,omitempty"`
	// Suppressed counts the events of the same kind, route and upstream
	// that were not sent since the previous one (deduplicated or rate
	// limited).
	Suppressed int `json:"suppressed"`
	// Text is a one-line summary, so chat webhooks that show a "text"
	// field (Slack, Mattermost) display something useful as is.
	Text string `json:"text"`
}

// summary builds the Text line.
func (e *Event) summary() string {
	var b strings.Builder
	b.WriteString("ballast")
	if e.Host != "" {
		b.WriteString(" (")
		b.WriteString(e.Host)
		b.WriteString(")")
	}
	b.WriteString(": ")
	switch e.Kind {
	case KindBreakerOpen:
		b.WriteString("circuit breaker opened")
	case KindCooldown:
		b.WriteString("upstream cooling down")
	case KindBudgetExhausted:
		b.WriteString("retry budget exhausted")
	case KindJobFailed:
		b.WriteString("async job failed")
	case KindStateFailing:
		b.WriteString("state store failing")
	default:
		b.WriteString(string(e.Kind))
	}
	if e.Route != "" {
		b.WriteString(" on route ")
		b.WriteString(e.Route)
	}
	if e.Upstream != "" {
		b.WriteString(" (upstream ")
		b.WriteString(e.Upstream)
		b.WriteString(")")
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Suppressed > 0 {
		b.WriteString(" [+")
		b.WriteString(strconv.Itoa(e.Suppressed))
		b.WriteString(" similar suppressed]")
	}
	return b.String()
}
