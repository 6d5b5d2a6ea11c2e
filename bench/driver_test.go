package bench

import (
	"context"
	"math"
	"net"
	"testing"
	"time"
)

func TestRunLoad(t *testing.T) {
	_, happy := serve(t, UpstreamConfig{})
	_, failing := serve(t, UpstreamConfig{Profile: Profile{Error503: 100}})
	_, resetting := serve(t, UpstreamConfig{Profile: Profile{Reset: 100}})
	_, hanging := serve(t, UpstreamConfig{Profile: Profile{Hang: 100}})
	_, slow := serve(t, UpstreamConfig{Profile: Profile{LatencyFixed: 20 * time.Millisecond}})
	get := []Workload{{Name: "get", Path: "/v1/items"}}
	cases := []struct {
		name      string
		cfg       LoadConfig
		wantClass string // "" means all succeed
		minP50    float64
	}{
		{name: "open loop", cfg: LoadConfig{Addr: happy, Rate: 400, Duration: 250 * time.Millisecond, Warmup: 50 * time.Millisecond}},
		{name: "closed loop", cfg: LoadConfig{Addr: happy, Connections: 4, Duration: 200 * time.Millisecond}},
		{name: "status class", cfg: LoadConfig{Addr: failing, Rate: 200, Duration: 100 * time.Millisecond}, wantClass: "5xx"},
		{name: "transport error", cfg: LoadConfig{Addr: resetting, Rate: 200, Duration: 100 * time.Millisecond}, wantClass: "transport"},
		{name: "timeout", cfg: LoadConfig{Addr: hanging, Rate: 100, Duration: 100 * time.Millisecond, Timeout: 50 * time.Millisecond}, wantClass: "timeout"},
		// One connection at 200 rps against a 20 ms upstream: open-loop
		// latency counts the queueing from the intended send time.
		{name: "no coordinated omission", cfg: LoadConfig{Addr: slow, Rate: 200, Connections: 1, Duration: 200 * time.Millisecond}, minP50: 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Workloads = get
			measured := false
			c.cfg.OnMeasure = func() { measured = true }
			res, err := RunLoad(context.Background(), c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			a := res.All
			if !measured || a.Requests == 0 || res.RPS <= 0 || math.IsNaN(res.RPS) || math.IsInf(res.RPS, 0) {
				t.Fatalf("measured %v, result %+v", measured, res)
			}
			if c.cfg.Rate > 0 {
				want := c.cfg.Rate * c.cfg.Duration.Seconds()
				if float64(a.Requests) < want*0.9 || float64(a.Requests) > want*1.1+1 {
					t.Errorf("open loop sent %d requests, want ≈ %.0f", a.Requests, want)
				}
			}
			if c.wantClass == "" && (a.OK != a.Requests || len(a.Errors) != 0) {
				t.Errorf("errors: %v", a.Errors)
			}
			if c.wantClass != "" && a.Errors[c.wantClass] != a.Requests {
				t.Errorf("errors %v, want all %d in %s", a.Errors, a.Requests, c.wantClass)
			}
			l := a.Latency
			if l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
				t.Errorf("percentiles out of order: %+v", l)
			}
			switch lag := res.ScheduleLag; {
			case c.cfg.Rate > 0 && lag == nil:
				t.Error("open loop: no schedule lag reported")
			case c.cfg.Rate > 0 && (lag.P50 > lag.P99 || lag.P99 > lag.Max || lag.Max > c.cfg.Duration.Seconds()*1000):
				t.Errorf("schedule lag out of order or beyond the run: %+v", *lag)
			case c.cfg.Rate == 0 && lag != nil:
				t.Errorf("closed loop reported a schedule lag: %+v", *lag)
			}
			if l.P50 < c.minP50 {
				t.Errorf("p50 %v ms, want ≥ %v ms (latency from the intended send time)", l.P50, c.minP50)
			}
		})
	}
}

func TestRunLoadKeysAndWorkloadsInTurn(t *testing.T) {
	u, addr := serve(t, UpstreamConfig{})
	wl := []Workload{
		{Name: "a", Path: "/a", KeyHeader: "X-Bench-Op"},
		{Name: "b", Method: "POST", Path: "/b", Body: []byte(`{}`), ContentType: "application/json", KeyHeader: "Idempotency-Key",
			Valid: func(ct, body []byte) bool { return false }},
	}
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: wl, Rate: 200, Duration: 100 * time.Millisecond, Warmup: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a, b := res.Workloads[0], res.Workloads[1]
	if a.OK != a.Requests || b.OK != 0 || b.Errors["invalid"] != b.Requests {
		t.Errorf("a %+v b %+v", a, b)
	}
	c := u.Counters()
	var measured, warm int
	for k := range c.Keys {
		switch {
		case len(k) > 5 && k[:5] == "warm-":
			warm++
		case k[:2] == "a-" || k[:2] == "b-":
			measured++
		default:
			t.Errorf("unexpected key %q", k)
		}
	}
	if int64(measured) != res.All.Requests || warm == 0 || c.Duplicates("") != 0 {
		t.Errorf("%d measured keys for %d requests, %d warm-up keys, %d duplicates", measured, res.All.Requests, warm, c.Duplicates(""))
	}
}

func TestRunLoadRejectsEmptyConfigs(t *testing.T) {
	for _, cfg := range []LoadConfig{{}, {Addr: "x:1", Duration: time.Second}, {Addr: "x:1", Workloads: []Workload{{}}}} {
		if _, err := RunLoad(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

func TestRunLoadStopsWithItsContext(t *testing.T) {
	_, addr := serve(t, UpstreamConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := RunLoad(ctx, LoadConfig{Addr: addr, Workloads: []Workload{{Path: "/"}}, Rate: 100, Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v after the context ended", d)
	}
}

func TestBareProxyForwards(t *testing.T) {
	_, up := serve(t, UpstreamConfig{Size: 512})
	addr := serveOnLoopback(t, NewBareProxy(up))
	res, err := RunLoad(context.Background(), LoadConfig{Addr: addr, Workloads: []Workload{{Path: "/v1/x"}}, Connections: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.All.Requests == 0 || res.All.OK != res.All.Requests {
		t.Errorf("%+v", res.All)
	}
}

// The run's end ends the requests in flight as well: a target that holds
// every request kept RunLoad waiting for each one's Timeout (a minute
// here), and the cut requests counted as the target's timeouts.
func TestRunLoadCutsRequestsInFlightWhenItsContextEnds(t *testing.T) {
	arrived := make(chan struct{}, 64)
	addr := serveConns(t, func(c net.Conn, _ int, done <-chan struct{}) bool {
		arrived <- struct{}{}
		<-done // never answers
		return false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		res LoadResult
		err error
	}
	ran := make(chan result, 1)
	go func() {
		res, err := RunLoad(ctx, LoadConfig{Addr: addr, Workloads: []Workload{{Path: "/"}}, Rate: 50,
			Connections: 4, Duration: time.Minute, Timeout: time.Minute})
		ran <- result{res, err}
	}()
	for range 4 { // every connection holds a request
		<-arrived
	}
	cancel()
	select {
	case r := <-ran:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if n := r.res.All.Requests; n != 0 {
			t.Errorf("%d requests counted (%+v); the ones the run's end cut are not the target's", n, r.res.All)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunLoad still waits for its requests in flight 30s after its context ended")
	}
}
