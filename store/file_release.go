package store

import (
	"errors"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// Releases whose write failed. A release means the claim's holder decided
// its call had no effect and may run again: the agent's retry should find
// the key free. When the release's write fails while the file holds the
// claim (a full disk, an I/O error), dropping the overlay entry would make
// the key read as that claim in flight until its lease ended, and as
// outcome unknown after that. So the release is kept instead: its overlay
// entry stays (the key reads as free in this process), and its delete is
// written again with each later commit until one lands.
//
// Keeping it is safe: the delete is of that claim's token only, so it
// never removes a later claim of the key (which a retry may have made
// meanwhile), and a crash before it lands leaves the claim in the file,
// read as outcome unknown after the restart, as before. A kept release
// rides commits that run anyway and never starts one, so a disk that keeps
// refusing costs nothing more than the writes it refuses. Close writes
// what is still kept, once.

// maxKeptReleases bounds the releases a File keeps for a later write
// (about 200 bytes and a key each). Beyond it a failed release is dropped,
// as before: its key reads as in flight until the claim's lease ends, and
// OnAsyncError says so.
const maxKeptReleases = 1024

// errReleaseDropped is joined to a failed release's error when the release
// could not be kept.
var errReleaseDropped = errors.New("too many failed releases wait to be written again, so this one was dropped: its key reads as in flight until its claim's lease ends")

// keptReleases holds the kept releases: those waiting for the next commit
// round, and those in a round (taken) until it ends.
type keptReleases struct {
	mu      sync.Mutex
	max     int
	waiting []*commitOp
	taken   int
	// any mirrors len(waiting) > 0, so that a round finds none without
	// the lock.
	any atomic.Bool
}

func newKeptReleases(max int) *keptReleases { return &keptReleases{max: max} }

// keep keeps t, a release whose first write failed, for the next round,
// or reports false when max releases are kept already.
func (k *keptReleases) keep(t *finishTx) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.waiting)+k.taken >= k.max {
		return false
	}
	t.keptOp = &commitOp{fn: t.run, after: t.retried}
	k.waiting = append(k.waiting, t.keptOp)
	k.any.Store(true)
	return true
}

// take returns the kept releases for the round about to commit (nil for
// none, without allocating); each one's after function ends it (done) or
// keeps it for the next round (again).
func (k *keptReleases) take() []*commitOp {
	if !k.any.Load() {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.waiting
	k.waiting = nil
	k.taken += len(out)
	k.any.Store(false)
	return out
}

// again keeps op, taken into a round that failed, for the next one.
func (k *keptReleases) again(op *commitOp) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.taken--
	op.err = nil
	k.waiting = append(k.waiting, op)
	k.any.Store(true)
}

// done ends a kept release taken into a round that landed it.
func (k *keptReleases) done() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.taken--
}

// len reports how many releases are kept.
func (k *keptReleases) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.waiting) + k.taken
}

// retried ends a kept release's write once its round ended. Landed, or
// found with nothing to do (the claim's record was swept, or replaced by
// a later claim of the key), its overlay entry goes, unless a later write
// of the key replaced it; failed again, it waits for the next round.
func (t *finishTx) retried(err error) {
	f, key := t.f, t.held.Key
	if err != nil {
		f.kept.again(t.keptOp)
		return
	}
	f.kept.done()
	f.pending.remove(key, t.pending)
	if t.deleted {
		f.records.Add(-1)
	}
	f.wakeup.wake(key)
}

// flushKept queues an empty write when releases are kept, so that Close's
// last commit round carries them.
func (f *File) flushKept() {
	if f.kept == nil || !f.kept.any.Load() {
		return
	}
	_ = f.commit.enqueue(func(*bolt.Tx) error { return nil }, nil)
}
