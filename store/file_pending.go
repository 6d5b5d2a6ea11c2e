package store

import (
	"sync"
	"sync/atomic"
	"time"
)

// pendingRecords is the File's overlay of completions and releases that are
// queued for the group commit but not yet committed: the records as they
// will be once committed. Reads (Claim's read-only step, Wait, Get) consult
// it before the file, so every reader sees a completion as soon as Complete
// returns (read-your-writes), while the file catches up within one commit.
//
// An entry is added before its write is queued and removed after its
// commit ended, before the key's waiters are woken; a reader that finds no
// entry therefore reads the file after the commit. A failed write of a
// journaled claim, or of the completion or release of such a claim, keeps
// its entry (pinned): the file never got the claim, so removing the entry
// would free a key whose call may be running.
type pendingRecords struct {
	mu sync.RWMutex
	m  map[string]*pendingRecord
}

// pendingRecord is one queued write: enc is the encoded record, nil for a
// release (the key will be absent).
type pendingRecord struct {
	enc []byte
	// newKey, for a journaled claim's entry (or a pinned completion in its
	// place): the key had no record when the claim was decided, so the
	// claim was counted in File.records (or a pinned entry it replaced
	// was, see claimTx.after). Set when the entry is made, or later on
	// the committing goroutine before the entry is pinned.
	newKey bool
	// pinned: the entry's write failed, so the journal's entry of the
	// key's claim is the only durable trace of it, or the entry is the
	// only place the key's answer lives; the entry stays in the overlay
	// (the key keeps reading as it), and it holds one pin of the journal
	// (see journal.pin) until a later write of the key lands or it
	// expires and Sweep removes it.
	pinned atomic.Bool
}

func newPendingRecords() *pendingRecords {
	return &pendingRecords{m: make(map[string]*pendingRecord)}
}

// get returns the pending write of key, or nil.
func (p *pendingRecords) get(key string) *pendingRecord {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.m[key]
}

// put records enc as key's pending write and returns the entry for remove.
// A later put of the same key replaces the entry.
func (p *pendingRecords) put(key string, enc []byte) *pendingRecord {
	return p.putEntry(key, &pendingRecord{enc: enc})
}

// putEntry is put with an entry the caller made.
func (p *pendingRecords) putEntry(key string, e *pendingRecord) *pendingRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[key] = e
	return e
}

// remove drops e unless a later put replaced it.
func (p *pendingRecords) remove(key string, e *pendingRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m[key] == e {
		delete(p.m, key)
	}
}

// takeExpiredPinned removes the pinned entries that have expired at now
// and returns them by key, unpinned: each one's journal pin is the
// caller's to end. The caller holds File.claimMu, so no write of those
// keys is being queued.
func (p *pendingRecords) takeExpiredPinned(now time.Time) map[string]*pendingRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out map[string]*pendingRecord
	for key, e := range p.m {
		if !e.pinned.Load() {
			continue
		}
		if exp, ok := expiresAt(e.enc); !ok || now.Before(exp) {
			continue
		}
		if !e.pinned.CompareAndSwap(true, false) {
			continue
		}
		delete(p.m, key)
		if out == nil {
			out = make(map[string]*pendingRecord)
		}
		out[key] = e
	}
	return out
}

// expiredPinnedAnswers returns, by key, the tokens of the pinned
// completions that have expired at now (nil for none). Such an answer
// may stand over its claim's record, in flight in the file (see
// finishTx.after), which its expiry frees too.
func (p *pendingRecords) expiredPinnedAnswers(now time.Time) map[string]uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out map[string]uint64
	for key, e := range p.m {
		if !e.pinned.Load() {
			continue
		}
		state, token, ok := peekClaim(e.enc)
		if !ok || state != Completed {
			continue
		}
		if exp, ok := expiresAt(e.enc); !ok || now.Before(exp) {
			continue
		}
		if out == nil {
			out = make(map[string]uint64)
		}
		out[key] = token
	}
	return out
}

// len reports how many writes are pending (tests).
func (p *pendingRecords) len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.m)
}
