// Package config defines ballast's configuration: the structs, loading from
// a YAML file plus environment and flag overrides (koanf), defaults, strict
// validation and redaction.
//
// config is a leaf: it never imports the packages it configures. proxy turns
// a validated *Config into running policies.
package config

// Config is the whole configuration. Load returns it with defaults applied
// and every route's policy merged over Defaults.
type Config struct {
	// Listen is the address agents connect to. Default 127.0.0.1:8080.
	Listen string `koanf:"listen" json:"listen"`
	// Admin is the admin listener.
	Admin Admin `koanf:"admin" json:"admin"`
	// Procs is how many cores (GOMAXPROCS) ballast's Go code runs on. 0,
	// the default, chooses: 1, the cheapest per request for a sidecar
	// beside one agent (see bench/RESULTS.md), or 2 with the file state
	// store, whose fsyncs hold a core while they run (on one core every
	// request would wait for them). A GOMAXPROCS environment variable wins.
	// Takes effect at start-up.
	Procs int `koanf:"procs" json:"procs"`
	// ShutdownTimeout bounds how long SIGTERM waits for in-flight requests
	// to drain, ShutdownDelay included. Default 30s.
	ShutdownTimeout Duration `koanf:"shutdown_timeout" json:"shutdown_timeout"`
	// ShutdownDelay is how long, once SIGTERM arrives, ballast goes on
	// accepting and serving as usual with /readyz failing, before the
	// drain begins: for an agent in the same pod that finishes its task
	// during its own grace period. It counts inside ShutdownTimeout, so it
	// must be less. Default 0: the drain begins at once.
	ShutdownDelay Duration `koanf:"shutdown_delay" json:"shutdown_delay"`
	// Server holds listener-level limits.
	Server Server `koanf:"server" json:"server"`
	// Log configures the decision trail.
	Log Log `koanf:"log" json:"log"`
	// State is where idempotency records and async jobs live.
	State State `koanf:"state" json:"state"`
	// Defaults is the policy every route inherits; a route may override any
	// key of it.
	Defaults Policy `koanf:"defaults" json:"defaults"`
	// Routes are matched by host, longest path prefix, then methods.
	Routes []Route `koanf:"routes" json:"routes"`
	// Notify sends alerts to a webhook; off unless notify.webhook is set.
	Notify Notify `koanf:"notify" json:"notify"`
	// Limiters are named rate limits that several routes can share with
	// rate_limit.limiter (for example one provider quota behind several
	// routes).
	Limiters map[string]Limiter `koanf:"limiters" json:"limiters,omitempty"`

	display *Config // the same config with ${NAME} references unexpanded
	origin  string  // where it was loaded from
}

// Origin says where the config was loaded from: a file path or
// "embedded default".
func (c *Config) Origin() string { return c.origin }

// Admin configures the admin listener (/healthz, /readyz, /metrics,
// /config, /reload).
type Admin struct {
	// Listen is the admin address. Default 127.0.0.1:9901. Binding it beyond
	// localhost requires Token.
	Listen string `koanf:"listen" json:"listen"`
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// every admin endpoint except /healthz and /readyz. Use ${ENV}.
	Token string `koanf:"token" json:"token,omitempty"`
	// AllowDebug lets agents ask for a summary of a request's decision
	// trail in the X-Ballast-Trail response header with X-Ballast-Debug: 1.
	// Default false.
	AllowDebug bool `koanf:"allow_debug" json:"allow_debug"`
}

// Log configures the per-request decision trail (one JSON line per
// request on stderr).
type Log struct {
	// Requests turns the trail on. Default true.
	Requests bool `koanf:"requests" json:"requests"`
	// SuccessSample is the share of successful requests logged, 0 to 1.
	// Failures are always logged. Default 1.
	SuccessSample float64 `koanf:"success_sample" json:"success_sample"`
	// FlushInterval is how long trail lines may wait in memory before they
	// are written; they are also written when 64 KiB have accumulated and
	// at shutdown. 0 writes every line at once (one write per request).
	// Default 1s.
	FlushInterval Duration `koanf:"flush_interval" json:"flush_interval"`
}

// State configures the state store. It is opened at start-up; changing it
// takes a restart.
type State struct {
	// Backend is memory, file or redis. Default memory, or file when Path
	// is set.
	Backend string `koanf:"backend" json:"backend"`
	// Path is the file backend's bbolt file (the sidecar's state volume).
	Path string `koanf:"path" json:"path,omitempty"`
	// MaxRecords bounds the idempotency records. Default 10000.
	MaxRecords int `koanf:"max_records" json:"max_records"`
	// MaxResponseBytes is the largest response stored for replay; larger
	// ones pass through unstored (and are counted). Default 1MiB.
	MaxResponseBytes Size `koanf:"max_response_bytes" json:"max_response_bytes"`
	// SweepEvery is how often expired records and jobs are removed.
	// Default 1m.
	SweepEvery Duration `koanf:"sweep_every" json:"sweep_every"`
	// Redis is the shared backend of a fleet of sidecars: idempotency
	// records, jobs, rate limits and upstream cool-downs.
	Redis Redis `koanf:"redis" json:"redis"`
}

// Redis configures the redis backend.
type Redis struct {
	// Address is host:port of Redis or Valkey.
	Address string `koanf:"address" json:"address,omitempty"`
	// Username and Password authenticate; use ${ENV} for the password.
	Username string `koanf:"username" json:"username,omitempty"`
	Password string `koanf:"password" json:"password,omitempty"`
	// TLS turns TLS on; CAFile adds CAs to trust.
	TLS    bool   `koanf:"tls" json:"tls,omitempty"`
	CAFile string `koanf:"ca_file" json:"ca_file,omitempty"`
	// KeyPrefix starts every key; replicas that share it share state.
	// Default "ballast:".
	KeyPrefix string `koanf:"key_prefix" json:"key_prefix"`
	// DialTimeout, ReadTimeout and WriteTimeout bound the connection.
	// Defaults 1s, 500ms, 500ms.
	DialTimeout  Duration `koanf:"dial_timeout" json:"dial_timeout"`
	ReadTimeout  Duration `koanf:"read_timeout" json:"read_timeout"`
	WriteTimeout Duration `koanf:"write_timeout" json:"write_timeout"`
	// OpTimeout bounds each state or rate-limit operation. Default 500ms.
	OpTimeout Duration `koanf:"op_timeout" json:"op_timeout"`
	// OnError is what happens while Redis is unreachable: fail_open (the
	// default: local limiters and a local store take over, loudly, until
	// Redis is back) or fail_closed (503 state_unavailable).
	OnError string `koanf:"on_error" json:"on_error"`
}

// Server configures the agent-facing listener.
type Server struct {
	// MaxHeaderBytes caps the request line plus headers. Larger requests get
	// 431. Default 16KiB.
	MaxHeaderBytes Size `koanf:"max_header_bytes" json:"max_header_bytes"`
	// IdleTimeout closes agent keep-alive connections idle this long.
	// Default 90s.
	IdleTimeout Duration `koanf:"idle_timeout" json:"idle_timeout"`
	// ReadTimeout bounds how long an agent may take to send a request's
	// line and headers and the first 8KiB of its body (what is read before
	// the request is routed); the rest of a body is bounded by the
	// request's own deadline. A slower agent gets 408. Default 60s, like
	// nginx's client_header_timeout.
	ReadTimeout Duration `koanf:"read_timeout" json:"read_timeout"`
}

// Policy is the part of a route that the defaults block provides and a
// route may override key by key.
type Policy struct {
	// Timeouts bound each phase of an upstream exchange.
	Timeouts Timeouts `koanf:"timeouts" json:"timeouts"`
	// MaxBody caps the request body; larger requests get 413. Default 10MiB.
	// Bodies are buffered whole, so any request ballast accepts can be
	// re-sent by a retry.
	MaxBody Size `koanf:"max_body" json:"max_body"`
	// Retry says when and how failed attempts are repeated.
	Retry Retry `koanf:"retry" json:"retry"`
	// HedgeAfter, when > 0, sends a second attempt of an idempotent request
	// (or one guarded by an Idempotency-Key) that has had no response
	// headers for this long; the first good answer wins and the other is
	// abandoned. Hedges are paid from the retry budget. Default 0 (off).
	HedgeAfter Duration `koanf:"hedge_after" json:"hedge_after,omitempty"`
	// Breaker is the circuit breaker of each upstream the route uses.
	Breaker Breaker `koanf:"breaker" json:"breaker"`
	// RateLimit shapes the route's traffic before it reaches the upstream.
	RateLimit RateLimit `koanf:"rate_limit" json:"rate_limit"`
	// Concurrency bounds the route's requests in flight (a bulkhead).
	Concurrency Concurrency `koanf:"concurrency" json:"concurrency"`
	// Validate checks every upstream response before the agent sees it.
	Validate Validate `koanf:"validate" json:"validate"`
	// Cache keeps good responses to serve when the upstream fails (or, in
	// fresh mode, instead of asking it).
	Cache Cache `koanf:"cache" json:"cache"`
	// StaticFallback is the answer of last resort when the upstream failed
	// and no cached response exists.
	StaticFallback *StaticFallback `koanf:"static_fallback" json:"static_fallback,omitempty"`
	// Idempotency makes a repeated request run once: duplicates attach to
	// the running call or replay its stored response.
	Idempotency Idempotency `koanf:"idempotency" json:"idempotency"`
	// Async lets agents run long calls as jobs with Prefer: respond-async.
	Async Async `koanf:"async" json:"async"`
}

// Idempotency configures idempotent replay.
type Idempotency struct {
	// Mode is off (the default), header (requests carrying
	// Idempotency-Key are guarded) or auto (every request is guarded by a
	// fingerprint of method, path, body and Headers, within Window).
	Mode string `koanf:"mode" json:"mode"`
	// TTL is how long a stored response replays. Default 24h.
	TTL Duration `koanf:"ttl" json:"ttl"`
	// Window is how long an auto fingerprint stays a duplicate. Default 10m.
	Window Duration `koanf:"window" json:"window"`
	// Headers are the request headers in an auto fingerprint.
	Headers []string `koanf:"headers" json:"headers,omitempty"`
	// OnConflict is what a duplicate of a running call gets: attach (wait
	// for its response, the default) or reject (409 in_progress at once).
	OnConflict string `koanf:"on_conflict" json:"on_conflict"`
	// StoreServerErrors stores 5xx answers too. Default false: a retry may
	// try again.
	StoreServerErrors bool `koanf:"store_server_errors" json:"store_server_errors,omitempty"`
	// Idempotent declares that the upstream call may run again when its
	// outcome was lost (a crash mid-call). Default false: the duplicate
	// gets 409 outcome_unknown and the agent decides.
	Idempotent bool `koanf:"idempotent" json:"idempotent,omitempty"`
}

// Async configures Prefer: respond-async jobs.
type Async struct {
	// Enabled accepts Prefer: respond-async on this route. Default false.
	Enabled bool `koanf:"enabled" json:"enabled"`
	// TTL is how long a finished job's response is kept. Default 1h.
	TTL Duration `koanf:"ttl" json:"ttl"`
}

// Validate lists the checks run, in order, on every upstream response the
// classifier judged successful. A failure is the class "invalid": retried
// when retry.on lists invalid (the default), then degraded, then answered
// 502 with reason invalid_response. Streams get the status and content-type
// checks only.
type Validate struct {
	// Status allows these statuses: "2xx", "200" or "200-299".
	Status []string `koanf:"status" json:"status,omitempty"`
	// ContentType allows these media types ("application/json", "text/*").
	ContentType []string `koanf:"content_type" json:"content_type,omitempty"`
	// JSON requires a well-formed JSON body.
	JSON bool `koanf:"json" json:"json,omitempty"`
	// Schema is an inline JSON Schema (as JSON text) the body must match.
	Schema string `koanf:"schema" json:"schema,omitempty"`
	// SchemaFile is a JSON Schema file the body must match.
	SchemaFile string `koanf:"schema_file" json:"schema_file,omitempty"`
	// JSONRPC requires a JSON-RPC 2.0 response; an error member fails it.
	JSONRPC bool `koanf:"jsonrpc" json:"jsonrpc,omitempty"`
	// RetryableRPCCodes are the JSON-RPC error codes worth retrying; other
	// JSON-RPC errors are the tool's answer and pass to the agent as they
	// are (counted, never cached).
	RetryableRPCCodes []int `koanf:"retryable_rpc_codes" json:"retryable_rpc_codes,omitempty"`
	// ProviderError fails a 2xx whose JSON body has a top-level "error".
	ProviderError bool `koanf:"provider_error" json:"provider_error,omitempty"`
	// NonEmpty fails an empty body.
	NonEmpty bool `koanf:"non_empty" json:"non_empty,omitempty"`
	// MaxBody fails a body larger than this. 0: no limit.
	MaxBody Size `koanf:"max_body" json:"max_body,omitempty"`
}

// Cache configures the route's response cache.
type Cache struct {
	// Mode is off (the default), fallback (stale-if-error: used only when
	// the upstream fails after retries, or its breaker is open) or fresh
	// (also answers from the cache while an entry is younger than ttl).
	Mode string `koanf:"mode" json:"mode"`
	// TTL is how long an entry is fresh (fresh mode). Default 0.
	TTL Duration `koanf:"ttl" json:"ttl"`
	// Stale is how long past ttl an entry may serve as a fallback.
	// Default 24h.
	Stale Duration `koanf:"stale" json:"stale"`
	// Vary lists request headers whose values select the response.
	Vary []string `koanf:"vary" json:"vary,omitempty"`
	// Public leaves the caller's identity (Authorization, API-key headers,
	// cookies) out of the key so all callers share entries. Only for tools
	// whose answers do not depend on who asks. Default false.
	Public bool `koanf:"public" json:"public,omitempty"`
	// AllowPrivate stores responses marked Cache-Control: private.
	// Default false.
	AllowPrivate bool `koanf:"allow_private" json:"allow_private,omitempty"`
	// MaxEntries bounds the route's entries. Default 10000.
	MaxEntries int `koanf:"max_entries" json:"max_entries"`
	// MaxBytes bounds the route's cached bytes. Default 64MiB.
	MaxBytes Size `koanf:"max_bytes" json:"max_bytes"`
	// Shared adds Redis (state.redis) as a second tier behind the local
	// cache, so an answer stored by one replica serves the whole fleet.
	// The key is the same as the local one (caller identity included);
	// Redis errors count as misses and never fail a request. Requires
	// state.backend: redis. Default false: the cache is per replica.
	Shared bool `koanf:"shared" json:"shared"`
}

// StaticFallback is a configured answer.
type StaticFallback struct {
	// Status is the answer's status. Default 503.
	Status int `koanf:"status" json:"status"`
	// ContentType of the body. Default application/json.
	ContentType string `koanf:"content_type" json:"content_type"`
	// Headers are extra response headers.
	Headers map[string]string `koanf:"headers" json:"headers,omitempty"`
	// Body is sent as is.
	Body string `koanf:"body" json:"body"`
}

// Limiter is a token bucket: requests per second, optionally partitioned by
// a key, optionally adaptive, optionally also counting model tokens.
type Limiter struct {
	// RPS is the sustained requests per second. 0: no request limit.
	RPS float64 `koanf:"rps" json:"rps,omitempty"`
	// Burst is how many requests may go at once. Default ⌈rps⌉.
	Burst int `koanf:"burst" json:"burst,omitempty"`
	// Key partitions the limit: "" (one bucket for all), "ip", "header:NAME"
	// (the value is hashed, never stored) or "json:FIELD" (a top-level
	// field of a JSON body). Requests without the key share one bucket.
	Key string `koanf:"key" json:"key,omitempty"`
	// MaxKeys bounds the per-key buckets kept (least recently used are
	// dropped). Default 10000.
	MaxKeys int `koanf:"max_keys" json:"max_keys,omitempty"`
	// Adaptive lowers the rate multiplicatively on each upstream 429 and
	// climbs back additively after successes (AIMD). Default false.
	Adaptive bool `koanf:"adaptive" json:"adaptive,omitempty"`
	// TokensPerMinute limits model tokens for OpenAI- and Anthropic-style
	// bodies: the estimate (prompt size and max_tokens) is reserved before
	// sending and settled from the response's usage. 0: off.
	TokensPerMinute int `koanf:"tokens_per_minute" json:"tokens_per_minute,omitempty"`
}

// RateLimit is a route's rate limit: inline, or a shared named one.
type RateLimit struct {
	Limiter `koanf:",squash"`
	// Use names a limiter of the top-level limiters block instead of an
	// inline limit (written `limiter:`).
	Use string `koanf:"limiter" json:"limiter,omitempty"`
	// MaxWait is the longest a request waits in line for its turn (always
	// within its deadline); past it the request is refused with 429 at
	// once and never forwarded. Default 1s.
	MaxWait Duration `koanf:"max_wait" json:"max_wait"`
}

// Concurrency is a bulkhead: at most Max requests in flight, the rest
// waiting in a bounded queue (low priority behind normal). Excess is shed
// with 503.
type Concurrency struct {
	// Max requests in flight. 0: unbounded.
	Max int `koanf:"max" json:"max,omitempty"`
	// Queue is how many may wait for a slot. Default 100.
	Queue int `koanf:"queue" json:"queue"`
	// MaxWait bounds the time in the queue (and the deadline does).
	// Default 5s.
	MaxWait Duration `koanf:"max_wait" json:"max_wait"`
}

// Retry configures retries. Attempts count the first one: attempts: 1
// never retries.
type Retry struct {
	// Attempts is the most attempts per upstream (primary, then each
	// fallback), the first included. Default 3.
	Attempts int `koanf:"attempts" json:"attempts"`
	// On lists what is retried: connect-failure, reset, timeout, invalid,
	// 5xx, gateway-error, or status codes. Default [connect-failure, reset,
	// timeout, invalid, 429, 502, 503, 504, 529].
	On []string `koanf:"on" json:"on"`
	// Backoff is the full-jitter delay between attempts.
	Backoff Backoff `koanf:"backoff" json:"backoff"`
	// MaxRetryAfter caps how long a server's hint (Retry-After, reset
	// headers) is waited for. Default 60s.
	MaxRetryAfter Duration `koanf:"max_retry_after" json:"max_retry_after"`
	// MaxCooldown caps how long one hint (a 429's Retry-After, a reset
	// header of an exhausted limit) may pause the API key's requests in
	// the shared cool-down, here and, with state.backend redis, across the
	// fleet: a longer hint pauses for MaxCooldown. A 503's hint, which
	// pauses no key, is cut to it as well: no retry waits, and no
	// Retry-After that ballast answers with asks, longer than MaxCooldown
	// for one hint. Default 24h (providers' daily quotas reset within a
	// day); positive, at most 8760h.
	MaxCooldown Duration `koanf:"max_cooldown" json:"max_cooldown"`
	// Budget bounds retries to a share of recent requests per upstream.
	Budget Budget `koanf:"budget" json:"budget"`
	// UnsafeMethods allows repeating POST and other non-idempotent methods
	// after they were sent (for model APIs, where a repeat is harmless).
	// Default false.
	UnsafeMethods bool `koanf:"unsafe_methods" json:"unsafe_methods"`
	// JSONRPC reads the JSON-RPC method of a POST (MCP and other JSON-RPC
	// tools) and treats the read-only ones as safe to repeat: initialize,
	// ping, server/discover, every */list, resources/read, prompts/get and
	// completion/complete. tools/call stays unsafe unless its tool is
	// listed in IdempotentTools. Default false.
	JSONRPC bool `koanf:"jsonrpc" json:"jsonrpc,omitempty"`
	// IdempotentTools are tools whose tools/call may be repeated.
	IdempotentTools []string `koanf:"idempotent_tools" json:"idempotent_tools,omitempty"`
}

// Backoff is the delay before retry n: uniform in [0, min(max, base·2^n)).
type Backoff struct {
	// Base is the first ceiling. Default 100ms.
	Base Duration `koanf:"base" json:"base"`
	// Max caps the ceiling. Default 10s.
	Max Duration `koanf:"max" json:"max"`
}

// Budget is the Finagle/Linkerd retry budget: retries may be at most Ratio
// of the requests of the last 10s, plus MinPerSecond.
type Budget struct {
	// Ratio is the share of recent requests that may be retried. Default 0.2.
	Ratio float64 `koanf:"ratio" json:"ratio"`
	// MinPerSecond retries are always allowed, for low traffic. Default 10.
	MinPerSecond float64 `koanf:"min_per_second" json:"min_per_second"`
}

// Breaker configures the circuit breaker of each upstream.
type Breaker struct {
	// Enabled turns the breaker on. Default true.
	Enabled bool `koanf:"enabled" json:"enabled"`
	// Failures opens it after this many consecutive failed attempts.
	// Default 20: with no fallback an open breaker turns a flaky upstream
	// into a dead one, so it should open for outages, not for noise (at a
	// 17% failure rate, 5 in a row happen every few seconds under load).
	Failures int `koanf:"failures" json:"failures"`
	// FailureRatio, when > 0, also opens it when this share of the
	// attempts of the last 10s failed (once min_requests were seen).
	// Default 0.5.
	FailureRatio float64 `koanf:"failure_ratio" json:"failure_ratio"`
	// MinRequests is the least number of attempts before failure_ratio
	// applies. Default 20.
	MinRequests int `koanf:"min_requests" json:"min_requests"`
	// OpenFor is how long it fails fast before probing. Default 10s.
	OpenFor Duration `koanf:"open_for" json:"open_for"`
	// HalfOpenRequests is how many probes may test a recovering upstream
	// at once. Default 1.
	HalfOpenRequests int `koanf:"half_open_requests" json:"half_open_requests"`
}

// Timeouts bound an upstream exchange.
type Timeouts struct {
	// Connect bounds the TCP dial. The TLS handshake that follows counts
	// against PerTry. Default 2s.
	Connect Duration `koanf:"connect" json:"connect"`
	// PerTry bounds one attempt until the response headers arrive. Default 30s.
	PerTry Duration `koanf:"per_try" json:"per_try"`
	// Idle is the longest gap allowed between two reads of a response body,
	// which matters for streams. Default 30s.
	Idle Duration `koanf:"idle" json:"idle"`
	// Total is the whole deadline of a request, body included. An agent may
	// lower it for one request with X-Ballast-Timeout. Default 120s.
	Total Duration `koanf:"total" json:"total"`
}

// Route sends matching requests to one upstream.
type Route struct {
	// Name identifies the route in metrics, logs and errors. Required, unique.
	Name string `koanf:"name" json:"name"`
	// Match selects requests.
	Match Match `koanf:"match" json:"match"`
	// Upstream is the base URL (http or https, optionally with a base path)
	// requests are forwarded to.
	Upstream string `koanf:"upstream" json:"upstream"`
	// StripPrefix removes Match.PathPrefix before appending the rest of the
	// path to the upstream's base path. Default false.
	StripPrefix bool `koanf:"strip_prefix" json:"strip_prefix"`
	// Headers edits the outbound request's headers.
	Headers HeaderRules `koanf:"headers" json:"headers"`
	// CAFile is an extra PEM CA bundle trusted for an https upstream, on top
	// of the system roots.
	CAFile string `koanf:"ca_file" json:"ca_file,omitempty"`
	// Fallbacks are tried in order when the upstream's breaker is open or
	// its attempts are spent, within the same total deadline.
	Fallbacks []Fallback `koanf:"fallbacks" json:"fallbacks,omitempty"`

	Policy `koanf:",squash"`
}

// Fallback is another upstream for a route: another region, a mirror, a
// secondary tool server. The route's header rules apply first, then the
// fallback's own (for example another API key from ${ENV}).
type Fallback struct {
	// Upstream is the fallback's base URL.
	Upstream string `koanf:"upstream" json:"upstream"`
	// Headers edits the outbound request for this fallback.
	Headers HeaderRules `koanf:"headers" json:"headers"`
	// CAFile is an extra CA bundle for an https fallback.
	CAFile string `koanf:"ca_file" json:"ca_file,omitempty"`
}

// Match selects the requests of a route. Every set field must match.
type Match struct {
	// Host matches the request's host (port ignored, case-insensitive).
	// "*.example.com" matches any subdomain. Empty matches any host.
	Host string `koanf:"host" json:"host,omitempty"`
	// PathPrefix matches at a segment boundary: "/api" matches /api and
	// /api/x but not /apix; "/api/" matches /api/x only. Required.
	PathPrefix string `koanf:"path_prefix" json:"path_prefix"`
	// Methods limits the route to these methods. Empty matches any.
	Methods []string `koanf:"methods" json:"methods,omitempty"`
}

// HeaderRules edits headers on the outbound request. Remove runs first.
type HeaderRules struct {
	// Set replaces (or adds) headers. Values may reference ${ENV} secrets.
	Set map[string]string `koanf:"set" json:"set,omitempty"`
	// Remove deletes headers by name.
	Remove []string `koanf:"remove" json:"remove,omitempty"`
}
