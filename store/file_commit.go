package store

import (
	"fmt"
	"sync"

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
// round. When the head of the queue is asynchronous, nobody waits there to
// lead, and the committer starts a flusher goroutine that leads until a
// synchronous write heads the queue again or the queue is empty. At most
// one flusher runs at a time, none while the committer is idle.
//
// Like DB.Batch, when a function fails the transaction is rolled back, that
// function gets its error, and the others run again in a new transaction;
// so functions must be safe to run more than once.
type committer struct {
	db  *bolt.DB
	max int
	// beforeRound, when set (tests only; set it before the first write),
	// runs on the leader before each commit round.
	beforeRound func()

	mu       sync.Mutex
	idle     sync.Cond // signalled when busy becomes false
	queue    []*commitOp
	busy     bool
	closed   bool
	flushers sync.WaitGroup
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

func newCommitter(db *bolt.DB, max int) *committer {
	c := &committer{db: db, max: max}
	c.idle.L = &c.mu
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
		c.busy = true
		c.startFlusher()
	}
	return nil
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
		c.mu.Lock()
		n := min(len(c.queue), c.max)
		batch := c.queue[:n:n]
		c.queue = c.queue[n:]
		c.mu.Unlock()

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
	for c.busy {
		c.idle.Wait()
	}
	c.mu.Unlock()
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
