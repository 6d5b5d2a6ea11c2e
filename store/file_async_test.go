package store

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// commitGate holds a File's committer busy: while it is closed, the leader
// of the next commit round blocks before committing, so every write queues.
type commitGate struct {
	t       testing.TB
	f       *File
	entered chan struct{}
	open    chan struct{}
	armed   chan struct{} // holds a token while the gate is armed
	held    chan error    // the blocking write's result
	opened  sync.Once
}

// openGated opens a File whose committer can be held busy with hold.
func openGated(t testing.TB, opts FileOptions) (*File, *commitGate) {
	t.Helper()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), opts)
	g := &commitGate{t: t, f: f, entered: make(chan struct{}), open: make(chan struct{}), armed: make(chan struct{}, 1), held: make(chan error, 1)}
	f.commit.beforeRound = func() {
		select {
		case <-g.armed:
			close(g.entered)
			<-g.open
		default:
		}
	}
	// Runs before openTestFile's Close: a failed test must not leave Close
	// waiting for the held commit.
	t.Cleanup(func() { g.opened.Do(func() { close(g.open) }) })
	return f, g
}

// hold starts a write that becomes the leader and blocks before its commit;
// it returns once the committer is held.
func (g *commitGate) hold() {
	g.armed <- struct{}{}
	go func() { g.held <- g.f.batch("blocker", func(*bolt.Tx) error { return nil }) }()
	<-g.entered
}

// release lets the held commit run and waits for the blocking write.
func (g *commitGate) release() {
	g.t.Helper()
	g.opened.Do(func() { close(g.open) })
	if err := <-g.held; err != nil {
		g.t.Fatalf("blocking write: %v", err)
	}
}

// awaitQueued yields until n writes are queued behind the held commit.
func awaitQueued(f *File, n int) {
	for {
		f.commit.mu.Lock()
		q := len(f.commit.queue)
		f.commit.mu.Unlock()
		if q >= n {
			return
		}
		runtime.Gosched()
	}
}

// committed reads key's record from the file, ignoring pending writes.
func committed(t testing.TB, f *File, key string) *Record {
	t.Helper()
	var rec *Record
	if err := f.db.View(func(tx *bolt.Tx) (err error) {
		rec, err = readRecord(tx, key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rec
}

// asyncErrors collects OnAsyncError calls.
type asyncErrors struct {
	mu   sync.Mutex
	errs []string
	got  chan error
}

func newAsyncErrors() *asyncErrors { return &asyncErrors{got: make(chan error, 16)} }

func (a *asyncErrors) hook(op, key string, err error) {
	a.mu.Lock()
	a.errs = append(a.errs, op+" "+key)
	a.mu.Unlock()
	a.got <- err
}

func (a *asyncErrors) none(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.errs) > 0 {
		t.Fatalf("OnAsyncError called for %v", a.errs)
	}
}

func TestFileCompleteReturnsBeforeCommit(t *testing.T) {
	ctx := context.Background()
	f, g := openGated(t, FileOptions{NoJournal: true})
	held := mustClaim(t, f, "k", args("a", t0))
	g.hold()
	if err := f.Complete(ctx, held, resp("done"), t0, time.Hour); err != nil {
		t.Fatalf("Complete with the committer busy: %v", err)
	}
	if rec := committed(t, f, "k"); rec == nil || rec.State != InFlight {
		t.Fatalf("file holds %+v before the commit, want the claim in flight", rec)
	}
	// Every reader in this process already sees the completion.
	if rec, err := f.Get(ctx, "k", t0); err != nil || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("Get of a pending completion = %+v, %v; want completed", rec, err)
	}
	if rec, owned, err := f.Claim(ctx, "k", args("a", t0)); err != nil || owned || rec.State != Completed {
		t.Fatalf("duplicate Claim of a pending completion = %+v, %v, %v; want the replay", rec, owned, err)
	}
	if err := f.Complete(ctx, held, resp("again"), t0, time.Hour); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second Complete while the first is pending = %v, want ErrNotHeld", err)
	}
	g.release()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if f.pending.len() != 0 {
		t.Fatalf("%d writes still pending after Close", f.pending.len())
	}
}

func TestFileWaitWakesAfterCommit(t *testing.T) {
	tests := []struct {
		name   string
		finish func(f *File, held *Record) error
		want   State // 0: released, Wait returns nil
	}{
		{name: "complete", finish: func(f *File, h *Record) error {
			return f.Complete(context.Background(), h, resp("done"), t0, time.Hour)
		}, want: Completed},
		{name: "release", finish: func(f *File, h *Record) error { return f.Release(context.Background(), h) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, g := openGated(t, FileOptions{NoJournal: true})
			held := mustClaim(t, f, "k", args("a", t0))
			done := startWait(t, context.Background(), f, "k")
			g.hold()
			if err := tt.finish(f, held); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-done:
				t.Fatalf("Wait returned %+v, %v before the commit", r.rec, r.err)
			default:
			}
			if waiters(f, "k") != 1 {
				t.Fatal("waiter woken before the commit")
			}
			g.release()
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			// The wake-up came after the commit: the file has the outcome.
			onDisk := committed(t, f, "k")
			if tt.want == 0 {
				if r.rec != nil || onDisk != nil {
					t.Fatalf("Wait = %+v, file %+v; want both absent", r.rec, onDisk)
				}
				return
			}
			if r.rec == nil || r.rec.State != tt.want || string(r.rec.Response.Body) != "done" {
				t.Fatalf("Wait = %+v, want the completed record", r.rec)
			}
			if onDisk == nil || onDisk.State != tt.want {
				t.Fatalf("file holds %+v when Wait returned, want completed", onDisk)
			}
		})
	}
}

func TestFileWriteQueuedAfterCompleteSeesIt(t *testing.T) {
	ctx := context.Background()
	errs := newAsyncErrors()
	f, g := openGated(t, FileOptions{NoJournal: true, OnAsyncError: errs.hook})
	held := mustClaim(t, f, "k", args("a", t0))
	g.hold()
	if err := f.Complete(ctx, held, resp("done"), t0, time.Minute); err != nil {
		t.Fatal(err)
	}
	type claimed struct {
		rec   *Record
		owned bool
		err   error
	}
	// A read-write transaction queued after the completion sees it, and so
	// does a claim after the completed record expired (had the claim been
	// committed first, the completion would have failed with ErrNotHeld).
	var inTx *Record
	txDone := make(chan error, 1)
	go func() {
		txDone <- f.batch("test", func(tx *bolt.Tx) (err error) {
			inTx, err = readRecord(tx, "k")
			return err
		})
	}()
	awaitQueued(f, 3) // the blocker, the completion, the transaction
	claimDone := make(chan claimed, 1)
	go func() {
		rec, owned, err := f.Claim(ctx, "k", args("a", t0.Add(2*time.Minute)))
		claimDone <- claimed{rec, owned, err}
	}()
	awaitQueued(f, 4)
	g.release()
	if err := <-txDone; err != nil || inTx == nil || inTx.State != Completed {
		t.Fatalf("transaction queued after Complete read %+v, %v; want completed", inTx, err)
	}
	c := <-claimDone
	if c.err != nil || !c.owned {
		t.Fatalf("Claim after the completion expired = %+v, %v, %v; want owned", c.rec, c.owned, c.err)
	}
	if rec := committed(t, f, "k"); rec == nil || rec.State != InFlight || rec.Token != c.rec.Token {
		t.Fatalf("file holds %+v, want the new claim", rec)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	errs.none(t)
}

func TestFileCloseFlushesPendingCompletions(t *testing.T) {
	ctx := context.Background()
	f, g := openGated(t, FileOptions{NoJournal: true})
	keys := []string{"a", "b", "c"}
	helds := make([]*Record, len(keys))
	for i, k := range keys {
		helds[i] = mustClaim(t, f, k, args("a", t0))
	}
	g.hold()
	for i, h := range helds {
		if err := f.Complete(ctx, h, resp("done-"+keys[i]), t0, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- f.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with completions pending", err)
	default:
	}
	g.release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, f.Path(), FileOptions{})
	if got := re.Recovery(); got.UnknownOutcome != 0 || got.Records != len(keys) {
		t.Fatalf("after reopen Recovery = %+v, want %d records and none unknown", got, len(keys))
	}
	for _, k := range keys {
		if rec, err := re.Get(ctx, k, t0); err != nil || rec.State != Completed || string(rec.Response.Body) != "done-"+k {
			t.Fatalf("after reopen %q = %+v, %v; want completed", k, rec, err)
		}
	}
}

func TestFileAsyncErrorReported(t *testing.T) {
	tests := []struct {
		name string
		// lose makes the claim no longer held while its completion waits
		// for the commit, calling complete at the right moment; it returns
		// a check of the store once the completion failed.
		lose func(t *testing.T, f *File, complete func()) (check func())
	}{
		{name: "taken over", lose: func(t *testing.T, f *File, complete func()) func() {
			// The take-over is queued before the completion: Complete still
			// finds the old claim in the file, and its commit then fails.
			a := args("a", t0.Add(2*time.Minute))
			a.TakeOverUnknown = true
			type claimed struct {
				rec *Record
				err error
			}
			done := make(chan claimed, 1)
			go func() {
				rec, _, err := f.Claim(context.Background(), "k", a)
				done <- claimed{rec, err}
			}()
			awaitQueued(f, 2)
			complete()
			return func() {
				c := <-done
				if c.err != nil {
					t.Fatal(c.err)
				}
				if rec := committed(t, f, "k"); rec == nil || rec.State != InFlight || rec.Token != c.rec.Token {
					t.Fatalf("file holds %+v, want the new claim", rec)
				}
			}
		}},
		{name: "swept", lose: func(t *testing.T, f *File, complete func()) func() {
			// Sweep does not queue: it removes the claim before the
			// completion's commit.
			complete()
			if n, err := f.Sweep(t0.Add(48 * time.Hour)); err != nil || n != 1 {
				t.Fatalf("Sweep = %d, %v", n, err)
			}
			return func() {
				if _, err := f.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
					t.Fatalf("Get after the failed completion = %v, want ErrNotFound", err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := newAsyncErrors()
			f, g := openGated(t, FileOptions{NoJournal: true, OnAsyncError: errs.hook})
			held := mustClaim(t, f, "k", args("a", t0))
			g.hold()
			check := tt.lose(t, f, func() {
				if err := f.Complete(context.Background(), held, resp("late"), t0.Add(3*time.Minute), time.Hour); err != nil {
					t.Fatalf("Complete = %v, want queued", err)
				}
			})
			g.release()
			if err := <-errs.got; !errors.Is(err, ErrNotHeld) {
				t.Fatalf("OnAsyncError got %v, want ErrNotHeld", err)
			}
			errs.mu.Lock()
			got := errs.errs[0]
			errs.mu.Unlock()
			if got != "complete k" {
				t.Fatalf("OnAsyncError op and key = %q", got)
			}
			check()
			if f.pending.len() != 0 {
				t.Fatal("failed completion still pending")
			}
		})
	}
}

func TestFileCompleteChecksBeforeQueuing(t *testing.T) {
	ctx := context.Background()
	errs := newAsyncErrors()
	f, g := openGated(t, FileOptions{NoJournal: true, OnAsyncError: errs.hook, Limits: Limits{MaxResponseBytes: 16}})
	held := mustClaim(t, f, "k", args("a", t0))
	small := &Response{Status: 200, Body: []byte("a")}
	g.hold()
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"nil record", func() error { return f.Complete(ctx, nil, small, t0, 0) }, ErrInvalid},
		{"nil response", func() error { return f.Complete(ctx, held, nil, t0, 0) }, ErrInvalid},
		{"too large", func() error {
			return f.Complete(ctx, held, &Response{Status: 200, Body: []byte("0123456789abcdefXYZ")}, t0, 0)
		}, ErrTooLarge},
		{"other token", func() error { return f.Complete(ctx, &Record{Key: "k", Token: held.Token + 1}, small, t0, 0) }, ErrNotHeld},
		{"release of a missing key", func() error { return f.Release(ctx, &Record{Key: "nope", Token: 1}) }, ErrNotHeld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if f.pending.len() != 0 {
		t.Fatal("a refused write was queued")
	}
	g.release()
	errs.none(t)
}

func TestFileSyncCompleteWaitsForCommit(t *testing.T) {
	for _, op := range []string{"complete", "release"} {
		t.Run(op, func(t *testing.T) {
			f, g := openGated(t, FileOptions{NoJournal: true, SyncComplete: true})
			held := mustClaim(t, f, "k", args("a", t0))
			g.hold()
			done := make(chan error, 1)
			go func() {
				if op == "complete" {
					done <- f.Complete(context.Background(), held, resp("done"), t0, time.Hour)
				} else {
					done <- f.Release(context.Background(), held)
				}
			}()
			awaitQueued(f, 2)
			select {
			case err := <-done:
				t.Fatalf("%s returned %v before its commit", op, err)
			default:
			}
			g.release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			rec := committed(t, f, "k")
			if (op == "complete" && (rec == nil || rec.State != Completed)) || (op == "release" && rec != nil) {
				t.Fatalf("file holds %+v when %s returned", rec, op)
			}
		})
	}
}
