package bench

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/valyala/fasthttp"
)

// CountersPath answers GET with the chaos upstream's Counters as JSON.
// ResetPath (POST) clears them and restarts the arrival numbering of
// requests without a key, so a second run draws the same faults as the
// first.
const (
	CountersPath = "/_bench/counters"
	ResetPath    = "/_bench/reset"
)

// KeyCount is what the upstream saw for one operation key.
type KeyCount struct {
	// Arrivals counts requests carrying the key, whatever their fate.
	Arrivals int64 `json:"arrivals"`
	// Effects counts arrivals where the upstream did the work (everything
	// but 429 and 503 rejections). More than one is a duplicate side effect.
	Effects int64 `json:"effects"`
}

// Counters is the JSON document at CountersPath.
type Counters struct {
	// Requests counts every request, keyed or not, since the last reset.
	Requests int64 `json:"requests"`
	// Faults counts requests by the fault injected ("none", "503", ...).
	Faults map[string]int64 `json:"faults"`
	// Keys holds per-key counts; the key is the Idempotency-Key header, or
	// else the X-Bench-Op header. At most MaxKeys are kept, the least
	// recently seen evicted first.
	Keys map[string]KeyCount `json:"keys"`
	// MaxKeys is the upstream's bound on Keys (UpstreamConfig.MaxKeys).
	MaxKeys int `json:"max_keys"`
	// EvictedKeys counts keys dropped from Keys since the last reset to
	// stay within MaxKeys. Above zero, Keys no longer covers every request
	// since the reset: an evicted key that comes back starts again from
	// zero arrivals (and redraws its first attempt's fate), so counts
	// summed over Keys (Duplicates, attempts) are lower bounds.
	EvictedKeys int64 `json:"evicted_keys"`
}

// Duplicates sums, over keys starting with prefix, the effects beyond the
// first: work done more than once for one operation.
func (c *Counters) Duplicates(prefix string) int64 {
	var d int64
	for k, v := range c.Keys {
		if strings.HasPrefix(k, prefix) && v.Effects > 1 {
			d += v.Effects - 1
		}
	}
	return d
}

// DefaultMaxKeys is the default bound on the keys the chaos upstream
// counts (UpstreamConfig.MaxKeys): about 15 MiB of counters, a chaos run
// at 200 rps for eight minutes. The chaos scenario raises it to its run's
// operations.
const DefaultMaxKeys = 100_000

// counters is the upstream's live tally. Safe for concurrent use.
type counters struct {
	requests atomic.Int64
	faults   [faultCut + 1]atomic.Int64
	// seq numbers the requests without a key, from 1 after each reset.
	seq atomic.Uint64

	mu      sync.Mutex
	keys    *simplelru.LRU[string, *KeyCount]
	maxKeys int
	evicted int64
}

// newCounters keeps at most maxKeys keys (DefaultMaxKeys when not
// positive), evicting the least recently seen.
func newCounters(maxKeys int) *counters {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	keys, _ := simplelru.NewLRU[string, *KeyCount](maxKeys, nil) // errs only on a size below 1
	return &counters{keys: keys, maxKeys: maxKeys}
}

// arrive records one arrival for key and returns how many came before it.
func (c *counters) arrive(key []byte) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	kc, ok := c.keys.Get(string(key))
	if !ok {
		kc = &KeyCount{}
		if c.keys.Add(string(key), kc) {
			c.evicted++
		}
	}
	kc.Arrivals++
	return kc.Arrivals - 1
}

// effect records that the work for key was done.
func (c *counters) effect(key []byte) {
	c.mu.Lock()
	if kc, ok := c.keys.Peek(string(key)); ok {
		kc.Effects++
	}
	c.mu.Unlock()
}

// next returns the arrival number of a request without a key.
func (c *counters) next() uint64 { return c.seq.Add(1) }

func (c *counters) fault(f fault) {
	c.requests.Add(1)
	c.faults[f].Add(1)
}

func (c *counters) snapshot() Counters {
	s := Counters{Requests: c.requests.Load(), Faults: map[string]int64{}, Keys: map[string]KeyCount{}, MaxKeys: c.maxKeys}
	for f := range c.faults {
		if n := c.faults[f].Load(); n > 0 {
			s.Faults[fault(f).String()] = n
		}
	}
	c.mu.Lock()
	for _, k := range c.keys.Keys() {
		if v, ok := c.keys.Peek(k); ok {
			s.Keys[k] = *v
		}
	}
	s.EvictedKeys = c.evicted
	c.mu.Unlock()
	return s
}

func (c *counters) reset() {
	c.mu.Lock()
	c.keys.Purge()
	c.evicted = 0
	c.mu.Unlock()
	c.requests.Store(0)
	c.seq.Store(0)
	for f := range c.faults {
		c.faults[f].Store(0)
	}
}

// serve answers the /_bench endpoints; it reports false for other paths.
func (c *counters) serve(ctx *fasthttp.RequestCtx) bool {
	switch string(ctx.Path()) {
	case CountersPath:
		b, err := json.Marshal(c.snapshot())
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
			return true
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(b)
	case ResetPath:
		if !ctx.IsPost() {
			ctx.Error("POST only", fasthttp.StatusMethodNotAllowed)
			return true
		}
		c.reset()
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	default:
		return false
	}
	return true
}

// FetchCounters reads the counters of the chaos upstream at addr (host:port).
func FetchCounters(c *fasthttp.HostClient, addr string) (Counters, error) {
	var out Counters
	status, body, err := c.Get(nil, "http://"+addr+CountersPath)
	if err != nil {
		return out, fmt.Errorf("bench: counters: %w", err)
	}
	if status != fasthttp.StatusOK {
		return out, fmt.Errorf("bench: counters: status %d", status)
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return out, fmt.Errorf("bench: counters: %w", err)
	}
	return out, nil
}

// ResetCounters clears the counters of the chaos upstream at addr.
func ResetCounters(c *fasthttp.HostClient, addr string) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + ResetPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	if err := c.Do(req, resp); err != nil {
		return fmt.Errorf("bench: reset counters: %w", err)
	}
	if resp.StatusCode() != fasthttp.StatusNoContent {
		return fmt.Errorf("bench: reset counters: status %d", resp.StatusCode())
	}
	return nil
}

// sortedKeys returns the keys of m in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
