package store

import (
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// committer is a group commit for bbolt: a write commits at once when no
// commit is running, and writes that arrive during a commit share the next
// one (up to max writes). So one request alone pays one fsync and no timer,
// and many requests share fsyncs — unlike bbolt's DB.Batch, which always
// waits MaxBatchDelay for company.
//
// Writes come in two kinds. A synchronous write (do) returns once it is
// committed; an asynchronous one (enqueue) returns once it is queued, and
// its after function runs once it is committed. Both share one queue, so a
// write sees every write queued before it, whatever their kinds.
//
// One goroutine at a time commits (the leader): the synchronous write that
// finds no commit running, or the one at the head of the queue when the
// previous round ends, so no caller commits for others for longer than one
// round. When the head of the queue is asynchronous but a synchronous write
// waits behind it, the committer starts a flusher goroutine that leads
// until a synchronous write heads the queue again or the queue is empty.
// When only asynchronous writes are queued, the committer waits up to delay
// for a synchronous write to lead a round that carries them too (so a
// completion rides the next claim's commit instead of paying a commit of
// its own), and starts the flusher when delay has passed. At most one
// flusher runs at a time, none while the committer is idle.
//
// Like DB.Batch, when a function fails the transaction is rolled back, that
// function gets its error, and the others run again in a new transaction;
// so functions must be safe to run more than once.
type committer struct {
	db    *bolt.DB
	max   int
	delay time.Duration
	// gap is the least time between the starts of two rounds; a leader
	// waits out the rest before it takes its round (0: never waits).
	gap time.Duration
	// beforeRound, when set (tests only; set it before the first write),
	// runs on the leader before each commit round.
	beforeRound func()
	// retries, when set (before the first write), returns the writes to
	// try again in the round about to commit, ahead of its queued ones
	// (the File's kept releases, file_release.go). They only ride rounds:
	// one never starts a round, so a disk that keeps refusing them costs
	// one more failed write per round, not a loop of rounds.
	retries func() []*commitOp

	mu       sync.Mutex
	idle     sync.Cond // signalled when busy becomes false
	queue    []*commitOp
	syncs    int // synchronous writes in queue
	busy     bool
	closed   bool
	flushers sync.WaitGroup
	// timer starts the flusher delay after asynchronous writes were
	// queued with no commit running; armed while it is pending.
	timer *time.Timer
	armed bool
	// lastStart is when the latest round started; only the leader uses it.
	lastStart time.Time
}

type commitOp struct {
	fn  func(*bolt.Tx) error
	err error
	// wake is set for a synchronous write: true: lead the next commit;
	// false: done, see err.
	wake chan bool
	// after is set for an asynchronous write: it gets err once the write's
	// commit ends.
	after func(error)
}

// newCommitter returns a committer of at most max writes per commit whose
// asynchronous writes wait up to delay for a synchronous one (0: none) and
// whose rounds start at least gap apart (0: back to back).
func newCommitter(db *bolt.DB, max int, delay, gap time.Duration) *committer {
	c := &committer{db: db, max: max, delay: delay, gap: gap}
	c.idle.L = &c.mu
	c.timer = time.AfterFunc(time.Hour, c.flushLater)
	c.timer.Stop()
	return c
}

// do runs fn in the next group commit and returns once that commit ended:
// fn's error, the commit's error, or ErrClosed after close.
func (c *committer) do(fn func(*bolt.Tx) error) error {
	op := &commitOp{fn: fn, wake: make(chan bool, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, op)
	c.syncs++
	lead := !c.busy
	c.busy = true
	c.mu.Unlock()
	if !lead && !<-op.wake {
		return op.err
	}
	// This op heads the queue: it is first in line or was handed the lead.
	c.lead(op)
	return op.err
}

// enqueue queues fn for the next group commit and returns at once (ErrClosed
// after close). after runs with the outcome once the commit ends, on the
// committing goroutine and outside the committer's lock: it must be quick
// and must not call do.
func (c *committer) enqueue(fn func(*bolt.Tx) error, after func(error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.queue = append(c.queue, &commitOp{fn: fn, after: after})
	if !c.busy {
		c.flushAsync()
	}
	return nil
}

// flushAsync arranges the commit of a queue that holds only asynchronous
// writes while no commit runs: at once without a delay or after close,
// else by the timer unless a synchronous write leads first. c.mu must be
// held and c.busy false.
func (c *committer) flushAsync() {
	if c.delay <= 0 || c.closed {
		c.busy = true
		c.startFlusher()
		return
	}
	if !c.armed {
		c.armed = true
		c.timer.Reset(c.delay)
	}
}

// flushLater runs when the timer fires: it starts the flusher unless a
// leader took the queue meanwhile.
func (c *committer) flushLater() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = false
	if !c.busy && !c.closed && len(c.queue) > 0 {
		c.busy = true
		c.startFlusher()
	}
}

// startFlusher starts a goroutine that leads from the head of the queue;
// c.mu must be held.
func (c *committer) startFlusher() {
	c.flushers.Go(func() { c.lead(nil) })
}

// lead commits rounds from the head of the queue. A synchronous leader (op
// non-nil, at the head of the queue) commits one round, which holds op; the
// flusher (op nil) commits until the queue is empty or a synchronous write
// heads it. Then lead passes the lead on or marks the committer idle.
func (c *committer) lead(op *commitOp) {
	for {
		if c.beforeRound != nil {
			c.beforeRound()
		}
		if c.gap > 0 {
			// Parked, not in a syscall: the scheduler runs the network
			// meanwhile, and what arrives joins this round.
			if rest := c.gap - time.Since(c.lastStart); rest > 0 {
				time.Sleep(rest)
			}
			c.lastStart = time.Now()
		}
		c.mu.Lock()
		n := min(len(c.queue), c.max)
		batch := c.queue[:n:n]
		c.queue = c.queue[n:]
		for _, o := range batch {
			if o.wake != nil {
				c.syncs--
			}
		}
		c.mu.Unlock()
		if c.retries != nil {
			if again := c.retries(); len(again) > 0 {
				batch = append(again, batch...)
			}
		}

		c.run(batch)
		// The asynchronous writes' after functions run first, so that a
		// synchronous write returns only after the effects of the writes
		// committed with it (or before it) are visible.
		for _, o := range batch {
			if o.after != nil {
				o.after(o.err)
			}
		}
		for _, o := range batch {
			if o.wake != nil && o != op {
				o.wake <- false
			}
		}

		c.mu.Lock()
		switch {
		case len(c.queue) == 0:
			c.busy = false
			c.queue = nil
			c.idle.Broadcast()
		case c.queue[0].wake != nil:
			c.queue[0].wake <- true
		case c.syncs == 0 && c.delay > 0 && !c.closed:
			// Only asynchronous writes: let them wait for company.
			c.busy = false
			c.idle.Broadcast()
			c.flushAsync()
		case op != nil:
			c.startFlusher()
		default:
			c.mu.Unlock()
			continue // the flusher keeps the lead
		}
		c.mu.Unlock()
		return
	}
}

// close refuses new writes, waits until every queued write is committed
// and the flusher has exited. It is idempotent.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	if !c.busy && len(c.queue) > 0 {
		c.flushAsync() // closed: starts the flusher at once
	}
	for c.busy {
		c.idle.Wait()
	}
	c.mu.Unlock()
	c.timer.Stop()
	c.flushers.Wait()
}

// run commits batch, setting each op's err.
func (c *committer) run(batch []*commitOp) {
	for len(batch) > 0 {
		failed := -1
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, o := range batch {
				if err := safeCall(o.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, o := range batch {
				o.err = err
			}
			return
		}
		batch[failed].err = err
		rest := make([]*commitOp, 0, len(batch)-1)
		rest = append(rest, batch[:failed]...)
		batch = append(rest, batch[failed+1:]...)
	}
}

func safeCall(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: panic in transaction: %v", ErrCorrupt, p)
		}
	}()
	return fn(tx)
}
