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
// The goroutine whose write starts a commit runs it (the leader); when its
// commit ends it hands the lead to the first waiting write, so no goroutine
// commits for others for longer than one round.
//
// Like DB.Batch, when a function fails the transaction is rolled back, that
// function gets its error, and the others run again in a new transaction;
// so functions must be safe to run more than once.
type committer struct {
	db  *bolt.DB
	max int

	mu    sync.Mutex
	queue []*commitOp
	busy  bool
}

type commitOp struct {
	fn   func(*bolt.Tx) error
	err  error
	wake chan bool // true: lead the next commit; false: done, see err
}

func (c *committer) do(fn func(*bolt.Tx) error) error {
	op := &commitOp{fn: fn, wake: make(chan bool, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, op)
	lead := !c.busy
	c.busy = true
	c.mu.Unlock()
	if !lead && !<-op.wake {
		return op.err
	}
	// This op heads the queue: it is first in line or was handed the lead.
	c.mu.Lock()
	n := min(len(c.queue), c.max)
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	c.mu.Unlock()

	c.run(batch)
	for _, o := range batch[1:] {
		o.wake <- false
	}

	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].wake <- true
	} else {
		c.busy = false
		c.queue = nil
	}
	c.mu.Unlock()
	return op.err
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
