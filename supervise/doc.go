// Package supervise keeps what ballast shows about itself while it runs:
// rolling per-route and per-upstream windows (request rate, success ratio,
// latency quantiles, retries, in-flight), the most recent failures, the
// status snapshot served as JSON at /status and as the HTML page at /, and
// the alert webhook notifier.
//
// supervise is pure bookkeeping: it never imports proxy. proxy records into
// it from the request path (Record and friends are allocation-free) and asks
// it for a Snapshot when /status is read. Every time-dependent decision takes
// an explicit now or a policy.Clock, so tests drive time with a FakeClock.
package supervise
