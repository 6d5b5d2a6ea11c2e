package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
)

// ErrConfig reports a ballast config the overhead scenario cannot measure
// (Options.Config): it does not load as `ballast run -c` would load it,
// the harness cannot run it on loopback, or ballast does not answer the
// scenario's request with it (checkRoute). The command line treats it as
// a usage error.
var ErrConfig = errors.New("bench: config")

// userConfig is a config file of the user's, loaded as `ballast run -c
// FILE` loads it: the environment's BALLAST_* overrides applied, ${NAME}
// references resolved from it, and checked by proxy.Check as `ballast
// validate` does, so a config ballast would refuse is refused before any
// child starts.
type userConfig struct {
	file string
	cfg  *config.Config
}

func loadUserConfig(file string) (*userConfig, error) {
	src := config.Source{File: file}
	cfg, err := config.Load(src)
	if err == nil {
		err = proxy.Check(cfg)
	}
	if err != nil {
		return nil, problemsError(file, err)
	}
	return &userConfig{file: file, cfg: cfg}, nil
}

// problemsError is an ErrConfig error naming file and each of err's
// problems.
func problemsError(file string, err error) error {
	ps := config.Problems(err)
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Error()
	}
	return fmt.Errorf("%w: %s: %d problem(s): %s", ErrConfig, file, len(ps), strings.Join(msgs, "; "))
}

// needsRedis reports whether the config uses Redis: for state, and with
// it shared caches, rate limits and cool-downs.
func (u *userConfig) needsRedis() bool { return u.cfg.State.Backend == "redis" }

// checkRedis refuses a config that uses Redis when the harness has no
// redis-server of its own to put in its place (haveRedis false): an
// ErrConfig error naming state.redis.address.
func (u *userConfig) checkRedis(haveRedis bool) error {
	if u.needsRedis() && !haveRedis {
		return fmt.Errorf("%w: %s: state.redis.address: the harness runs a Redis backend on a redis-server of its own on 127.0.0.1, never on %s, and redis-server is not on PATH",
			ErrConfig, u.file, u.cfg.State.Redis.Address)
	}
	return nil
}

// site is where the harness runs a user's config: every address on
// 127.0.0.1, the state in the harness's temp dir.
type site struct {
	// Listen and Admin are ballast's listeners, host:port.
	Listen, Admin string
	// Upstream is the chaos upstream, host:port: every route's upstream
	// and fallbacks, and the alert webhook.
	Upstream string
	// Redis is the harness's redis-server, host:port; "" when none runs.
	Redis string
	// Dir is the harness's temp dir, for a file state store.
	Dir string
	// Token replaces admin.token when the config sets one.
	Token string
}

// rewrite returns u's config rewritten for s, as the YAML the ballast
// child is started with and as that child will load it (parsed in env,
// the child's environment). What it changes:
//
//   - listen and admin.listen become s.Listen and s.Admin;
//   - every route's upstream and every fallback's become
//     http://s.Upstream, each keeping its base path (with its ${NAME}
//     references as written: see onUpstream), and their ca_file is
//     dropped (TLS to the upstream is not measured);
//   - state.path, when set, becomes s.Dir/state.db: never the user's file;
//   - with state.backend redis, state.redis points at s.Redis, without
//     credentials or TLS: never the user's Redis, even on loopback, whose
//     keys the run would write. Without s.Redis that is an ErrConfig
//     error naming state.redis.address. Otherwise state.redis.address,
//     unused, is cleared;
//   - notify.webhook, when set, goes to the upstream: alerts stay on and
//     never leave the machine;
//   - admin.token, when set, becomes s.Token, which the harness knows;
//   - shutdown_delay becomes 0 and shutdown_timeout 5s, so that the child
//     stops promptly.
//
// Everything else is kept as /config shows it (config.Config.Redacted):
// ${NAME} references as written, which the child resolves from env as
// `ballast run` would, and literal credentials as "[redacted]", so the
// file the harness writes holds no secret. Every other string is written
// so that the child loads it as run loaded it, a $$ of the original
// included (keepLoaded). The result is checked by checkLoopback.
func (u *userConfig) rewrite(s site, env []string) ([]byte, *config.Config, error) {
	if err := u.checkRedis(s.Redis != ""); err != nil {
		return nil, nil, err
	}
	shown, err := u.cfg.Redacted()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrConfig, u.file, err)
	}
	dec := json.NewDecoder(bytes.NewReader(shown))
	dec.UseNumber() // integers stay integers
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrConfig, u.file, err)
	}
	keepLoaded(doc)

	doc["listen"] = s.Listen
	admin := object(doc, "admin")
	admin["listen"] = s.Admin
	if u.cfg.Admin.Token != "" {
		admin["token"] = literal(s.Token)
	}
	doc["shutdown_delay"] = "0s"
	doc["shutdown_timeout"] = "5s"

	routes, _ := doc["routes"].([]any)
	if len(routes) != len(u.cfg.Routes) {
		return nil, nil, fmt.Errorf("%w: %s: %d routes shown, %d loaded", ErrConfig, u.file, len(routes), len(u.cfg.Routes))
	}
	for i, r := range u.cfg.Routes {
		route, _ := routes[i].(map[string]any)
		if route == nil {
			return nil, nil, fmt.Errorf("%w: %s: routes[%d] is not an object", ErrConfig, u.file, i)
		}
		shown, _ := route["upstream"].(string)
		route["upstream"] = onUpstream(shown, r.Upstream, s.Upstream)
		delete(route, "ca_file")
		fallbacks, _ := route["fallbacks"].([]any)
		for j, f := range r.Fallbacks {
			if j < len(fallbacks) {
				if fb, ok := fallbacks[j].(map[string]any); ok {
					shown, _ := fb["upstream"].(string)
					fb["upstream"] = onUpstream(shown, f.Upstream, s.Upstream)
					delete(fb, "ca_file")
				}
			}
		}
	}

	state := object(doc, "state")
	if u.cfg.State.Path != "" {
		state["path"] = literal(filepath.Join(s.Dir, "state.db"))
	}
	redis := object(state, "redis")
	for _, k := range []string{"username", "password", "tls", "ca_file"} {
		delete(redis, k)
	}
	if u.needsRedis() {
		redis["address"] = s.Redis
	} else {
		delete(redis, "address")
	}
	if u.cfg.Notify.Webhook != "" {
		object(doc, "notify")["webhook"] = "http://" + s.Upstream + "/ballast-bench/notify"
	}

	y, err := json.MarshalIndent(doc, "", "  ") // JSON is YAML
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrConfig, u.file, err)
	}
	name := u.file + " (rewritten for the harness)"
	cfg, err := config.Parse(y, config.Source{File: name, Environ: env})
	if err != nil {
		return nil, nil, problemsError(name, err)
	}
	if err := checkLoopback(cfg); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
	}
	return y, cfg, nil
}

// object is m[key] as an object, made when missing.
func object(m map[string]any, key string) map[string]any {
	o, ok := m[key].(map[string]any)
	if !ok {
		o = map[string]any{}
		m[key] = o
	}
	return o
}

// literal is s written so that the config's ${NAME} expansion leaves it
// as it is ($ doubled).
func literal(s string) string { return strings.ReplaceAll(s, "$", "$$") }

// keepLoaded rewrites, in place, every string of v (the /config view,
// decoded) that the child's load would read otherwise than `ballast run`
// read the original. /config shows a string written with a ${NAME}
// reference as written, $$ escapes included, which the child expands as
// run did; every other string it shows as loaded, each $$ already read as
// $, so it is written as a literal. A loaded string holds "${" only when
// the original did (as "${" or "$${"), so "${" tells the two apart.
// Object keys are never expanded, and are left alone.
func keepLoaded(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok {
				x[k] = loadedString(s)
			} else {
				keepLoaded(e)
			}
		}
	case []any:
		for i, e := range x {
			if s, ok := e.(string); ok {
				x[i] = loadedString(s)
			} else {
				keepLoaded(e)
			}
		}
	}
}

// loadedString is s, a string of the /config view, as the child must read
// it (see keepLoaded).
func loadedString(s string) string {
	if strings.Contains(s, "${") {
		return s
	}
	return literal(s)
}

// onUpstream is an upstream URL moved to http://hostport, keeping its
// base path. shown is the URL as /config shows it, ${NAME} references
// unexpanded, and loaded the same URL expanded. A reference may stand for
// a secret in the path (a bot token, a gateway's account), which the file
// the harness writes must not hold: when shown has one, the base path is
// taken from shown as written, for the child to expand as `ballast run`
// would, from the first / after its "://"; without "://" (the scheme and
// host from a reference) the base path is dropped.
func onUpstream(shown, loaded, hostport string) string {
	base := "http://" + hostport
	if !strings.Contains(shown, "${") {
		out := url.URL{Scheme: "http", Host: hostport}
		if u, err := url.Parse(loaded); err == nil {
			out.Path, out.RawPath = u.Path, u.RawPath
		}
		return literal(out.String())
	}
	if _, rest, ok := strings.Cut(shown, "://"); ok {
		if slash := strings.IndexByte(rest, '/'); slash >= 0 {
			return base + rest[slash:]
		}
	}
	return base
}

// checkLoopback returns an error naming the first key of cfg that would
// make ballast listen or connect anywhere but 127.0.0.1: the listeners,
// every upstream and fallback, Redis when it is the backend, and the
// alert webhook.
func checkLoopback(cfg *config.Config) error {
	var errs []error
	check := func(key, hostport string) {
		host, _, err := net.SplitHostPort(hostport)
		if err != nil || host != "127.0.0.1" {
			errs = append(errs, fmt.Errorf("%s: %q is not on 127.0.0.1", key, hostport))
		}
	}
	checkURL := func(key, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			return
		}
		check(key, u.Host)
	}
	check("listen", cfg.Listen)
	check("admin.listen", cfg.Admin.Listen)
	for i, r := range cfg.Routes {
		checkURL(fmt.Sprintf("routes[%d].upstream", i), r.Upstream)
		for j, f := range r.Fallbacks {
			checkURL(fmt.Sprintf("routes[%d].fallbacks[%d].upstream", i, j), f.Upstream)
		}
	}
	if cfg.State.Backend == "redis" {
		check("state.redis.address", cfg.State.Redis.Address)
	}
	if cfg.Notify.Webhook != "" {
		checkURL("notify.webhook", cfg.Notify.Webhook)
	}
	return errors.Join(errs...)
}

// childEnv is the environment of the ballast child that runs a rewritten
// config: the harness's, minus every BALLAST_* variable (their overrides
// are in the config already, and applied again they would undo the
// rewrite, BALLAST_LISTEN for one), limited to procs cores.
func childEnv(procs int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, fmt.Sprintf("GOMAXPROCS=%d", procs))
}

// repeatNotes are the policies of the route named route that answer the
// overhead scenario's request, the same one every time, from a store
// after the first: the figures are then those of the store's hits.
func (u *userConfig) repeatNotes(route string) []string {
	var notes []string
	for _, r := range u.cfg.Routes {
		if r.Name != route {
			continue
		}
		if r.Cache.Mode == "fresh" && r.Cache.TTL > 0 {
			notes = append(notes, fmt.Sprintf("route %s: cache mode fresh answers the repeated request from its cache for %s", r.Name, r.Cache.TTL.D()))
		}
		if r.Idempotency.Mode == "auto" {
			notes = append(notes, fmt.Sprintf("route %s: idempotency mode auto replays the repeated request within %s", r.Name, r.Idempotency.Window.D()))
		}
	}
	return notes
}

// wrkBlindSpots say what wrk, the saturation driver, cannot count in the
// answers of the route named route: its static_fallback's, when their
// status is below 400, which wrk takes for successes (it sees statuses,
// never X-Ballast-Fallback; see saturate). A fallback at 400 or above
// (503 by default) wrk counts among its status errors.
func (u *userConfig) wrkBlindSpots(route string) []string {
	var notes []string
	for _, r := range u.cfg.Routes {
		if r.Name != route || r.StaticFallback == nil {
			continue
		}
		if status := r.StaticFallback.Status; status != 0 && status < 400 {
			notes = append(notes, fmt.Sprintf("route %s: wrk, which drove the saturation run, cannot see X-Ballast-Fallback, and counts "+
				"the answers of the route's static_fallback (status %d) as served should its upstream fail; "+
				"the open loop, and --driver go, count them as errors (fallback)", r.Name, status))
		}
	}
	return notes
}
