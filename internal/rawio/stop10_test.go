package rawio_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// stopPair returns a connection accepted by a Listener whose Stop is
// stop (a *rawio.Conn) and the agent's side of it, both closed with the
// test.
func stopPair(t *testing.T, stop *rawio.Stop) (*rawio.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := rawio.Listener{Listener: ln, Stop: stop}
	defer rl.Close()
	agent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := rl.Accept()
	if err != nil {
		agent.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); agent.Close() })
	rc, ok := c.(*rawio.Conn)
	if !ok {
		t.Fatalf("Accept returned %T", c)
	}
	return rc, agent
}

// readResult is what one Read returned, and when.
type readResult struct {
	s   string
	err error
	at  time.Time
}

// readAsync runs one Read of c and reports it on the returned channel.
// started is closed just before the Read begins.
func readAsync(c net.Conn) (started chan struct{}, out chan readResult) {
	started, out = make(chan struct{}), make(chan readResult, 1)
	go func() {
		buf := make([]byte, 256)
		close(started)
		n, err := c.Read(buf)
		out <- readResult{string(buf[:n]), err, time.Now()}
	}()
	return started, out
}

func within(t *testing.T, out chan readResult, d time.Duration, what string) readResult {
	t.Helper()
	select {
	case r := <-out:
		return r
	case <-time.After(d):
		t.Fatalf("%s: the Read still waits after %v", what, d)
		return readResult{}
	}
}

// A Read waiting for the first byte of a request ends at the Wake that
// follows Drain, with net.ErrClosed and nothing read, long before its
// deadline; so does every Read after it that finds nothing.
func TestDrain10_DrainAndWakeEndAWaitingFirstRead(t *testing.T) {
	var stop rawio.Stop
	c, _ := stopPair(t, &stop)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	started, out := readAsync(c)
	<-started
	select {
	case r := <-out:
		t.Fatalf("a Read with nothing to read returned while serving: %q %v", r.s, r.err)
	case <-time.After(50 * time.Millisecond): // the Read is parked by now, or about to be
	}
	stop.Drain()
	c.Wake()
	r := within(t, out, 2*time.Second, "drained and woken")
	if !errors.Is(r.err, net.ErrClosed) || r.s != "" {
		t.Fatalf("Read after Drain and Wake = %q, %v; want nothing and net.ErrClosed", r.s, r.err)
	}
	var oe *net.OpError
	if !errors.As(r.err, &oe) || oe.Op != "read" {
		t.Errorf("%v: want a *net.OpError with Op read", r.err)
	}
	// Another Read on it ends the same way, at once: nothing is taken.
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a second Read after Drain = %v, want net.ErrClosed", err)
	}
}

// What has arrived is read, not dropped: with a request in the socket
// when Drain is called, the Read returns it.
func TestDrain10_DrainReadsWhatArrived(t *testing.T) {
	var stop rawio.Stop
	c, agent := stopPair(t, &stop)
	const req = "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
	if _, err := agent.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	// On loopback a Write returns once its bytes are in the receiver's
	// socket: the request is there when Drain is called.
	stop.Drain()
	c.Wake()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 0, len(req))
	buf := make([]byte, 256)
	for len(got) < len(req) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if errors.Is(err, net.ErrClosed) && len(got) == 0 {
				t.Fatalf("Read after Drain with a request there = %v, want the request", err)
			}
			break
		}
	}
	if string(got) != req {
		t.Fatalf("read %q, want %q", got, req)
	}
}

// No lost wake-up: Drain and Wake racing a Read that is just beginning
// (before its first look at the socket, or between that look and its
// park in the netpoller) always end it at once, never at its deadline.
func TestDrain10_WakeRacingAReadIsNeverLost(t *testing.T) {
	for i := range 300 {
		var stop rawio.Stop
		c, _ := stopPair(t, &stop)
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		started, out := readAsync(c)
		if i%2 == 0 {
			<-started
		}
		stop.Drain()
		c.Wake()
		r := within(t, out, 3*time.Second, "a Read racing Drain and Wake")
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("round %d: Read = %q, %v; want net.ErrClosed", i, r.s, r.err)
		}
		c.Close()
	}
}

// A Read that begins after Drain, on a connection never woken (one
// accepted after the drain's wake-up went round), fails at once too.
func TestDrain10_ReadAfterDrainWithoutWake(t *testing.T) {
	var stop rawio.Stop
	stop.Drain()
	c, _ := stopPair(t, &stop)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, out := readAsync(c)
	if r := within(t, out, 2*time.Second, "a Read after Drain"); !errors.Is(r.err, net.ErrClosed) {
		t.Fatalf("Read after Drain = %q, %v; want net.ErrClosed", r.s, r.err)
	}
}

// The Read of a request begun (the rest of its head, or its body) goes
// on waiting through Drain and Wake, under its deadline: the rest is
// read when it comes, and the deadline fires when it passes, not early.
// Halt then ends such a Read with ErrHalted, which is no timeout.
func TestDrain10_ARequestBegunWaitsUntilHalt(t *testing.T) {
	var stop rawio.Stop
	c, agent := stopPair(t, &stop)
	if _, err := agent.Write([]byte("POST /x HTTP/1.1\r\nHo")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || n == 0 {
		t.Fatalf("the head's first bytes: %d %v", n, err)
	}
	stop.Drain()
	c.Wake()

	// The rest arrives: read.
	_, out := readAsync(c)
	c.Wake()
	if _, err := agent.Write([]byte("st: x\r\n")); err != nil {
		t.Fatal(err)
	}
	if r := within(t, out, 2*time.Second, "the rest of a head"); r.err != nil || r.s == "" {
		t.Fatalf("Read of the rest of the head after Drain = %q, %v", r.s, r.err)
	}

	// Its deadline fires at its time, woken or not.
	deadline := time.Now().Add(150 * time.Millisecond)
	_ = c.SetReadDeadline(deadline)
	_, out = readAsync(c)
	c.Wake()
	r := within(t, out, 3*time.Second, "a Read past its deadline")
	if !errors.Is(r.err, os.ErrDeadlineExceeded) || r.at.Before(deadline) {
		t.Fatalf("Read of a request begun, drained: %v at %v before the deadline; want os.ErrDeadlineExceeded, not early",
			r.err, deadline.Sub(r.at))
	}

	// Halt ends it at once, however far its deadline.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	started, out := readAsync(c)
	<-started
	stop.Halt()
	c.Wake()
	r = within(t, out, 2*time.Second, "a Read after Halt")
	if !errors.Is(r.err, rawio.ErrHalted) {
		t.Fatalf("Read of a request begun after Halt = %v, want ErrHalted", r.err)
	}
	var ne net.Error
	if errors.As(r.err, &ne) && ne.Timeout() {
		t.Errorf("ErrHalted reads as a timeout: %v (the server would answer 408)", r.err)
	}
	// What arrived before the Halt is still read.
	if _, err := agent.Write([]byte("\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "\r\n" {
		t.Errorf("Read of bytes there after Halt = %q, %v", buf[:n], err)
	}
}

// After a response goes out, the next Read waits for the first byte of
// the next request: Drain ends it. An interim 100 Continue is no
// response: the body read after it goes on waiting.
func TestDrain10_FirstReadFollowsResponses(t *testing.T) {
	t.Run("after a response", func(t *testing.T) {
		var stop rawio.Stop
		c, agent := stopPair(t, &stop)
		if _, err := agent.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 256)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		stop.Drain()
		c.Wake()
		_, out := readAsync(c)
		if r := within(t, out, 2*time.Second, "the next request's Read"); !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Read for the next request after Drain = %q, %v; want net.ErrClosed", r.s, r.err)
		}
	})
	t.Run("after 100 Continue", func(t *testing.T) {
		var stop rawio.Stop
		c, agent := stopPair(t, &stop)
		if _, err := agent.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 256)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		stop.Drain()
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		_, out := readAsync(c)
		c.Wake()
		if _, err := agent.Write([]byte("{}")); err != nil {
			t.Fatal(err)
		}
		if r := within(t, out, 2*time.Second, "the body after 100 Continue"); r.err != nil || r.s != "{}" {
			t.Fatalf("the body's Read after Drain = %q, %v; want the body", r.s, r.err)
		}
	})
}

// Wake while serving changes nothing: a waiting Read goes on waiting and
// takes the data when it comes; a deadline set before fires at its time,
// not at the Wake; Writes are not disturbed.
func TestDrain10_WakeWhileServingIsHarmless(t *testing.T) {
	var stop rawio.Stop
	c, agent := stopPair(t, &stop)
	_, out := readAsync(c)
	c.Wake()
	c.Wake()
	select {
	case r := <-out:
		t.Fatalf("a Read woken while serving returned: %q %v", r.s, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := agent.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if r := within(t, out, 2*time.Second, "a woken Read"); r.err != nil || r.s != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("Read = %q, %v", r.s, r.err)
	}
	deadline := time.Now().Add(150 * time.Millisecond)
	_ = c.SetReadDeadline(deadline)
	c.Wake() // before the Read: its wait fails once, re-arms, and waits on
	_, out = readAsync(c)
	r := within(t, out, 3*time.Second, "a Read with a deadline")
	if !errors.Is(r.err, os.ErrDeadlineExceeded) || r.at.Before(deadline) {
		t.Fatalf("Read woken while serving: %v, %v before its deadline; want os.ErrDeadlineExceeded at it", r.err, deadline.Sub(r.at))
	}
	_ = c.SetReadDeadline(time.Time{})
	c.Wake()
	if n, err := c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil || n != 19 {
		t.Fatalf("Write after Wake = %d, %v", n, err)
	}
	got := make([]byte, 19)
	if _, err := io.ReadFull(agent, got); err != nil {
		t.Fatal(err)
	}
}

// A Listener without a Stop, and a connection Wrap made outside any
// Listener (an upstream's), read as before whatever Wake does.
func TestDrain10_NoStopReadsAsBefore(t *testing.T) {
	c, agent := stopPair(t, nil)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, out := readAsync(c)
	c.Wake()
	select {
	case r := <-out:
		t.Fatalf("a Read with no Stop returned at a Wake: %q %v", r.s, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := agent.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if r := within(t, out, 2*time.Second, "a Read with no Stop"); r.err != nil || r.s != "x" {
		t.Fatalf("Read = %q, %v", r.s, r.err)
	}
	up, _ := pair(t)
	up.(*rawio.Conn).Wake()
	_ = up.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := up.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an upstream connection's Read after Wake = %v, want its deadline", err)
	}
}

// A Listener's connection with a Stop still reads and writes without
// allocating while serving: the Stop costs the hot path nothing.
func TestDrain10_StopKeepsReadsAllocationFree(t *testing.T) {
	var stop rawio.Stop
	c, agent := stopPair(t, &stop)
	msg := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 256)
	resp := []byte("HTTP/1.1 200 OK\r\n\r\n")
	peer := make([]byte, len(resp))
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := agent.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(resp); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(agent, peer); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request on a connection with a Stop, want 0", allocs)
	}
}

// The empty lines a client may send before a request line (RFC 9112
// §2.2; some send a CRLF after a POST body) are no request begun: a Read
// waiting after them ends at Drain like one that read nothing, instead of
// holding the drain until its deadline and then being answered 503 for a
// request never sent.
func TestDrain10_EmptyLinesBeforeARequestAreNoRequest(t *testing.T) {
	var stop rawio.Stop
	c, agent := stopPair(t, &stop)
	if _, err := agent.Write([]byte("\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "\r\n" {
		t.Fatalf("the stray CRLF: %q %v", buf[:n], err)
	}
	started, out := readAsync(c)
	<-started
	stop.Drain()
	c.Wake()
	r := within(t, out, 2*time.Second, "drained and woken after a stray CRLF")
	if !errors.Is(r.err, net.ErrClosed) || r.s != "" {
		t.Fatalf("Read after a stray CRLF, Drain and Wake = %q, %v; want nothing and net.ErrClosed", r.s, r.err)
	}
	// A request after empty lines is still one: its head begun, it waits.
	var stop2 rawio.Stop
	c2, agent2 := stopPair(t, &stop2)
	if _, err := agent2.Write([]byte("\r\nPOST /x HTTP/1.1\r\nHo")); err != nil {
		t.Fatal(err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := c2.Read(buf); err != nil || n == 0 {
		t.Fatalf("the head's first bytes: %d %v", n, err)
	}
	stop2.Halt()
	c2.Wake()
	if _, err := c2.Read(buf); !errors.Is(err, rawio.ErrHalted) {
		t.Errorf("Read of a head begun after empty lines, halted = %v, want ErrHalted", err)
	}
}
