package store

import "sync"

// pendingRecords is the File's overlay of completions and releases that are
// queued for the group commit but not yet committed: the records as they
// will be once committed. Reads (Claim's read-only step, Wait, Get) consult
// it before the file, so every reader sees a completion as soon as Complete
// returns (read-your-writes), while the file catches up within one commit.
//
// An entry is added before its write is queued and removed after its
// commit ended (committed or failed), before the key's waiters are woken;
// a reader that finds no entry therefore reads the file after the commit.
type pendingRecords struct {
	mu sync.RWMutex
	m  map[string]*pendingRecord
}

// pendingRecord is one queued write: enc is the encoded record, nil for a
// release (the key will be absent).
type pendingRecord struct{ enc []byte }

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
	e := &pendingRecord{enc: enc}
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

// len reports how many writes are pending (tests).
func (p *pendingRecords) len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.m)
}
