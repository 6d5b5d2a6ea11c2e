package proxy

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// agentPair is a loopback connection: the agent's end, and ballast's
// end wrapped as the server wraps accepted connections.
func agentPair(t *testing.T) (agent net.Conn, served *rawio.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	agent, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	served, ok := rawio.Wrap(c).(*rawio.Conn)
	if !ok {
		t.Fatal("not a raw connection")
	}
	t.Cleanup(func() { agent.Close(); served.Close() })
	return agent, served
}

func TestAgentWatchScan(t *testing.T) {
	w := newAgentWatch(time.Second)
	t0 := time.Unix(1_000_000, 0)
	leaving, leavingConn := agentPair(t)
	_, stayingConn := agentPair(t)
	pipelining, pipeliningConn := agentPair(t)

	gone := w.add(leavingConn, t0)
	staying := w.add(stayingConn, t0)
	piped := w.add(pipeliningConn, t0)
	young := w.add(leavingConn, t0.Add(900*time.Millisecond)) // same agent, a later call
	defer w.remove(staying)
	defer w.remove(piped)

	leaving.Close()
	if _, err := pipelining.Write([]byte("GET /next HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	for !leavingConn.HungUpNow() { // the FIN crosses loopback asynchronously
		runtime.Gosched()
	}

	if n := w.scan(t0.Add(500 * time.Millisecond)); n != 0 || gone.hungUp() {
		t.Fatalf("calls younger than the interval were checked: %d called off", n)
	}
	if n := w.scan(t0.Add(time.Second)); n != 1 {
		t.Fatalf("scan called off %d calls, want 1 (the agent that hung up)", n)
	}
	if !gone.hungUp() || staying.hungUp() || piped.hungUp() || young.hungUp() {
		t.Fatalf("hung up: left %v, staying %v, pipelining %v, young %v; want only the agent that left",
			gone.hungUp(), staying.hungUp(), piped.hungUp(), young.hungUp())
	}
	select {
	case <-gone.leftC():
	default:
		t.Fatal("a wait on the call would not wake")
	}
	if gone.attemptCancel().attach(leavingConn) {
		t.Error("an attempt after the agent hung up was not called off")
	}
	if n := w.scan(t0.Add(2 * time.Second)); n != 1 {
		t.Fatalf("second scan called off %d, want 1 (the later call, now old enough); the first is not called off twice", n)
	}
	w.remove(gone)
	w.remove(young)

	// A pooled call comes back clean.
	again := w.add(stayingConn, t0)
	defer w.remove(again)
	select {
	case <-again.leftC():
		t.Fatal("a reused call carried its predecessor's signal")
	default:
	}
	if again.hungUp() {
		t.Fatal("a reused call carried its predecessor's cancel")
	}
	var none *watchedCall
	if none.hungUp() || none.leftC() != nil || none.attemptCancel() != nil {
		t.Fatal("an unwatched call must read as present, with nothing to wait on or cancel")
	}
}

// Registering and unregistering a call is on every forwarded request's
// path: it must not allocate.
func TestAgentWatchAddRemoveDoesNotAllocate(t *testing.T) {
	w := newAgentWatch(time.Second)
	_, c := agentPair(t)
	now := time.Now()
	w.remove(w.add(c, now)) // fill the pool
	if n := testing.AllocsPerRun(200, func() { w.remove(w.add(c, now)) }); n != 0 {
		t.Fatalf("%v allocations per add and remove, want 0", n)
	}
}

func BenchmarkAgentWatchAddRemove(b *testing.B) {
	w := newAgentWatch(time.Second)
	now := time.Now()
	c := &rawio.Conn{}
	b.ReportAllocs()
	for b.Loop() {
		w.remove(w.add(c, now))
	}
}
