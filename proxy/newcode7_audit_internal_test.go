package proxy

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Registrations are pooled and scanned from another goroutine: calls of
// present agents, registered on records that carried a gone agent's
// signal a moment ago, never read as gone; calls of gone agents are all
// found; and the race detector sees the scan, add and remove side by side.
func TestNewCode7_AgentWatchPoolReuseUnderScans(t *testing.T) {
	w := newAgentWatch(time.Millisecond)
	leaving, goneConn := agentPair(t)
	_, presentConn := agentPair(t)
	leaving.Close()
	for !goneConn.HungUpNow() { // the FIN crosses loopback asynchronously
		runtime.Gosched()
	}
	old := time.Now().Add(-time.Hour)

	stop := make(chan struct{})
	var scans atomic.Int64
	var scanner sync.WaitGroup
	scanner.Add(1)
	go func() {
		defer scanner.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			w.scan(time.Now())
			scans.Add(1)
		}
	}()

	const workers, rounds = 4, 100
	var wg sync.WaitGroup
	errs := make(chan string, workers*rounds*4)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				g := w.add(goneConn, old)
				deadline := time.Now().Add(5 * time.Second)
				for !g.hungUp() {
					if time.Now().After(deadline) {
						errs <- "a gone agent's call was not found within 5s"
						w.remove(g)
						return
					}
					runtime.Gosched()
				}
				select { // the signal follows the cancel, within the same scan
				case <-g.leftC():
				case <-time.After(5 * time.Second):
					errs <- "a gone agent's call was called off without waking its wait"
				}
				if !g.attemptCancel().isCanceled() {
					errs <- "a gone agent's attempt was not called off"
				}
				w.remove(g) // back to the pool, signal read

				g = w.add(goneConn, old)
				for !g.hungUp() && time.Now().Before(deadline) {
					runtime.Gosched()
				}
				w.remove(g) // back to the pool with its signal unread

				p := w.add(presentConn, old)
				seen := scans.Load()
				for scans.Load() < seen+2 { // at least one whole scan saw it
					runtime.Gosched()
				}
				select {
				case <-p.leftC():
					errs <- "a present agent's call woke on a previous call's signal"
				default:
				}
				if p.hungUp() {
					errs <- "a present agent's call was called off"
				}
				w.remove(p)
			}
		}()
	}
	wg.Wait()
	close(stop)
	scanner.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	w.mu.Lock()
	empty := w.calls.next == &w.calls && w.calls.prev == &w.calls
	w.mu.Unlock()
	if !empty {
		t.Error("calls left registered after every one was removed")
	}
}

// rpcCalls refuses what JSON parsers read differently; the same call
// spelled plainly, in another key order or with nested look-alikes, is
// read as it is.
func TestNewCode7_RPCCallsStrictReading(t *testing.T) {
	j := &jsonrpcSafety{tools: map[string]bool{"search": true}}
	for _, tt := range []struct {
		name, body string
		safe       bool
		bug        string
	}{
		{"plain read-only", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, true, ""},
		{"params before method", `{"params":{"name":"search"},"id":1,"method":"tools/call"}`, true, ""},
		{"name nested in arguments", `{"method":"tools/call","params":{"arguments":{"name":"delete"},"name":"search"}}`, true, ""},
		{"escaped key is the key", `{"m\u0065thod":"tools/call","method":"ping"}`, false, ""},
		{"escaped name twice", `{"method":"tools/call","params":{"name":"search","n\u0061me":"delete"}}`, false, ""},
		{"Unicode case fold (long s)", `{"method":"ping","paramſ":{}}`, false, ""},
		{"upper-case key", `{"method":"ping","METHOD":"tools/call"}`, false, ""},
		{"batch with a non-object", `[{"method":"ping"},1]`, false, ""},
		{"empty batch", `[]`, false, ""},
		{"two top-level values", `{"method":"ping"} {"method":"tools/call"}`, false, ""},
		{"byte-order mark", "\ufeff{\"method\":\"ping\"}", false, ""},
		{"method not a string", `{"method":["ping"]}`, false, ""},
		{"NUL-suffixed key", `{"method\u0000":"tools/call","method":"ping"}`, false,
			"a key \"method\\u0000\" is skipped as unknown; a C parser (cJSON) reads it as \"method\", first wins: tools/call"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := j.safe([]byte(tt.body)); got != tt.safe {
				t.Errorf("safe(%s) = %v, want %v", tt.body, got, tt.safe)
			}
		})
	}
}
