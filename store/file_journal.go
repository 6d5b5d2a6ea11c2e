package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"
)

// journal is the File's claim journal: an append-only file beside the
// bbolt file that makes a claim durable with one small write and one
// fdatasync, shared by every claim that arrives meanwhile (group commit).
//
// A claim must be on disk before the request it guards goes upstream.
// Committing it to bbolt instead costs a transaction of page writes and
// two fdatasyncs (pages, then meta), and the claim waits for the commit
// already running too. With the journal, Claim returns once its entry is
// synced, and the record goes to bbolt in the background, in the same
// group commits as completions (read from the pending overlay meanwhile).
//
// The file is a header (magic, epoch) and entries written in order from
// journalHeaderSize. Each entry is
//
//	length uint32 | crc32c(epoch, payload) uint32 | payload
//	payload: kind byte | key length uint16 | key | body
//
// with body the encoded record of a claim, or the token (uint64) of a
// released claim. Opening the file replays what bbolt lacks (see
// replayJournal); a torn entry or one of an older epoch ends the replay,
// and nothing there was acknowledged. The file starts over (a new epoch in
// the header, synced before any entry of it) once bbolt holds everything
// in it, when it has grown past journalResetSize, on open and on Close —
// but never while a claim whose bbolt write failed pins it (see pin).
//
// The space ahead of the entries is zero-filled a MiB at a time, so that
// an entry's fdatasync overwrites blocks that exist and flushes data only:
// appending would change the file's size, and each fdatasync would then
// commit the file system's journal as well (measured here: about twice the
// time).
type journal struct {
	path string
	f    *os.File

	mu   sync.Mutex
	cond sync.Cond // signals synced, flushed or err moving
	buf  []byte    // entries added and not yet being written
	// next is the number of the next entry; entries < synced are on disk;
	// entries < flushed are committed to bbolt too (reported by File).
	next, synced, flushed uint64
	// marking counts the queued commits that will report to markFlushed
	// or markUnflushed (see expectFlush): while none is, nothing will move
	// flushed, and a leader must not wait for it.
	marking int
	// pinned counts the claims whose entries are their only durable trace
	// (see pin): while any is, the file never starts over.
	pinned  int
	off     int64 // where the next batch goes
	filled  int64 // the file is zero-filled or written up to here
	epoch   uint64
	writing bool  // a leader is writing and syncing
	err     error // sticky: the journal is closed
	// taken is the number of the first entry not yet taken into a batch.
	taken uint64
	// failed holds the claim entries of batches that failed to be written
	// or synced, with the error, until their waiter takes it (wait). A
	// failure is not sticky: the next batch is written where the failed
	// one was, so a disk that was full for a moment costs the claims of
	// that moment only. Their releases are queued again (see fail).
	failed map[uint64]error
	// requeueMax bounds the releases a failed batch queues again.
	requeueMax int
	// awaited holds the entries other than claims that a caller waits for
	// (see addReleases) until their batch ends: a failure goes to that
	// wait as to a claim's, rather than to nobody.
	awaited map[uint64]bool
	// failedEnd is how far the bytes of failed batches may reach: the next
	// batch written is padded with zeroes up to it, so that no entry of a
	// failed batch can be read back after the good ones.
	failedEnd int64
	// restart: an attempt to start the file over failed, so its header
	// may be torn, and no entry is written until an attempt succeeds.
	restart bool
	// reset is the size past which the leader starts the file over.
	reset int64

	// discarded: the journal found at open had a damaged header, so its
	// entries, if any, could not be read (OpenFile reports it).
	discarded bool
}

const (
	journalClaim   byte = 1
	journalRelease byte = 2

	// journalRequeueMax is how many of a failed batch's releases are
	// queued again (journal.fail): a few dozen bytes each.
	journalRequeueMax = 1024

	journalResetSize  = 16 << 20
	journalEntryMax   = 1 << 26 // a sanity bound for replay, far above any record
	journalHeaderSize = 64
	journalFillChunk  = 1 << 20
)

var journalMagic = [8]byte{'b', 'a', 'l', 'l', 'a', 's', 't', 'J'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journalPath is where the journal of the state file at path lives.
func journalPath(path string) string { return path + ".claims" }

// openJournal opens (creating) the journal and reads its valid entries.
func openJournal(path string) (*journal, []journalEntry, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("store: open claim journal %s: %w", path, err)
	}
	epoch, entries, err := readJournal(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("store: read claim journal %s: %w", path, err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("store: claim journal %s: %w", path, err)
	}
	j := &journal{path: path, f: f, reset: journalResetSize, requeueMax: journalRequeueMax, epoch: epoch, filled: info.Size()}
	j.cond.L = &j.mu
	if epoch == 0 && entries == nil {
		j.discarded = headerDamaged(f)
	}
	return j, entries, nil
}

// headerDamaged reports whether f, a journal without a valid header, has
// something else than zeroes where the header goes: a header a crash or a
// disk damaged, rather than a journal never written.
func headerDamaged(f *os.File) bool {
	var h [journalHeaderSize]byte
	n, _ := f.ReadAt(h[:], 0)
	for _, b := range h[:n] {
		if b != 0 {
			return true
		}
	}
	return false
}

// journalEntry is one replayed entry.
type journalEntry struct {
	kind byte
	key  string
	body []byte
}

// readJournal returns the header's epoch and the entries of that epoch up
// to the first torn or invalid one. A missing or foreign header means no
// entries.
func readJournal(r io.Reader) (uint64, []journalEntry, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return 0, nil, err
	}
	if len(data) < journalHeaderSize || [8]byte(data[:8]) != journalMagic ||
		crc32.Checksum(data[:16], castagnoli) != binary.BigEndian.Uint32(data[16:]) {
		return 0, nil, nil
	}
	epoch := binary.BigEndian.Uint64(data[8:])
	var out []journalEntry
	for data = data[journalHeaderSize:]; len(data) >= 8; {
		n := binary.BigEndian.Uint32(data)
		if n < 3 || n > journalEntryMax || int(n) > len(data)-8 {
			break
		}
		p := data[8 : 8+n]
		if entrySum(epoch, p) != binary.BigEndian.Uint32(data[4:]) {
			break
		}
		kl := int(binary.BigEndian.Uint16(p[1:]))
		if 3+kl > len(p) {
			break
		}
		out = append(out, journalEntry{kind: p[0], key: string(p[3 : 3+kl]), body: p[3+kl:]})
		data = data[8+n:]
	}
	return epoch, out, nil
}

// entrySum is an entry's checksum: its epoch's and its payload's, so that
// an entry left from an earlier epoch never passes for a current one.
func entrySum(epoch uint64, payload []byte) uint32 {
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], epoch)
	return crc32.Update(crc32.Checksum(e[:], castagnoli), castagnoli, payload)
}

// start begins a new epoch, which hides every entry written so far (bbolt
// holds them all), and syncs it before any entry of it is written.
func (j *journal) start() error {
	var h [journalHeaderSize]byte
	copy(h[:], journalMagic[:])
	binary.BigEndian.PutUint64(h[8:], j.epoch+1)
	binary.BigEndian.PutUint32(h[16:], crc32.Checksum(h[:16], castagnoli))
	if _, err := j.f.WriteAt(h[:], 0); err != nil {
		return err
	}
	if err := fdatasync(j.f); err != nil {
		return err
	}
	j.epoch++
	j.off = journalHeaderSize
	j.filled = max(j.filled, journalHeaderSize)
	return nil
}

// fill zero-fills the file up to a chunk past end, when it is not yet.
func (j *journal) fill(end int64) error {
	if end <= j.filled {
		return nil
	}
	zeros := make([]byte, journalFillChunk)
	for j.filled < end+journalFillChunk {
		if _, err := j.f.WriteAt(zeros, j.filled); err != nil {
			return err
		}
		j.filled += journalFillChunk
	}
	return nil
}

// add queues an entry and returns its number; wait(n) then returns once
// it is on disk. Entries are numbered, written and synced in add order.
func (j *journal) add(kind byte, key string, body []byte) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.addLocked(kind, key, body)
}

// addReleases queues the releases of the claims of keys[i] with tokens[i]
// (a sweep's), all in one batch, and returns the number of the last for
// wait: unlike a claim's release, nobody else waits for them, so a failure
// of their batch is reported to that wait.
func (j *journal) addReleases(keys []string, tokens []uint64) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	var n uint64
	for i, key := range keys {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], tokens[i])
		n = j.addLocked(journalRelease, key, b[:])
	}
	if j.err == nil {
		if j.awaited == nil {
			j.awaited = make(map[uint64]bool)
		}
		j.awaited[n] = true
	}
	return n
}

// addLocked is add with j.mu held.
func (j *journal) addLocked(kind byte, key string, body []byte) uint64 {
	if j.err != nil { // closed: nothing will be written, wait says so
		j.next++
		j.taken = j.next
		return j.next - 1
	}
	start := len(j.buf)
	j.buf = append(j.buf, 0, 0, 0, 0, 0, 0, 0, 0, kind, byte(len(key)>>8), byte(len(key)))
	j.buf = append(j.buf, key...)
	j.buf = append(j.buf, body...)
	binary.BigEndian.PutUint32(j.buf[start:], uint32(len(j.buf)-start-8))
	// The checksum is the leader's to write: it depends on the epoch the
	// entry is written in.
	n := j.next
	j.next++
	return n
}

// addRelease queues the release of token's claim of key. Nobody waits for
// it: a release that a crash loses leaves the claim as UnknownOutcome,
// as it would without the journal.
func (j *journal) addRelease(key string, token uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], token)
	j.add(journalRelease, key, b[:])
}

// wait returns once entry n is on disk, writing and syncing the queued
// entries itself when no other goroutine is: one fdatasync serves every
// entry queued while the previous one ran. A leader leads only until its
// own entry is synced, then hands the lead to a waiter, so no request
// writes for others for longer than about two syncs.
//
// A claim entry whose batch failed gets that batch's error: its claim was
// not made durable, and the caller gives it up. So does an awaited entry
// (addReleases); the others' failures go to nobody.
func (j *journal) wait(n uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if err, ok := j.failed[n]; ok {
			delete(j.failed, n)
			return err
		}
		switch {
		case j.err != nil:
			return j.err
		case n < j.synced:
			return nil
		case !j.writing:
			j.lead(n)
		default:
			j.cond.Wait()
		}
	}
}

// lead writes and syncs batches until entry n is synced or has failed;
// j.mu is held on entry and exit, and released while writing.
func (j *journal) lead(n uint64) {
	j.writing = true
	defer func() { j.writing = false; j.cond.Broadcast() }()
	for n >= j.synced && j.failed[n] == nil && len(j.buf) > 0 && j.err == nil {
		// Let the goroutines that are ready run up to their claims first:
		// their entries then share this fdatasync (measured: +5% keyed
		// requests per second under load).
		j.mu.Unlock()
		runtime.Gosched()
		j.mu.Lock()
		batch, from, upto := j.buf, j.taken, j.next
		j.buf, j.taken = nil, upto
		if j.restart || (j.off >= j.reset && j.pinned == 0) {
			// Start over once bbolt has every entry written so far, if a
			// queued commit is still to say so; else (the commits failed,
			// or the committer closed) write on, and start over later.
			// After a failed attempt nothing was synced since, so bbolt
			// still has everything (a pin since then is a claim whose entry
			// was never synced). A claim's write may fail during the wait
			// and pin the file: the commits after it then move the mark
			// past its entry.
			for j.flushed < j.synced && j.err == nil && j.marking > 0 {
				j.cond.Wait()
			}
			if j.err == nil && (j.restart || (j.flushed >= j.synced && j.pinned == 0)) {
				if err := j.start(); err != nil {
					j.restart = true
					j.fail(batch, from, fmt.Errorf("store: reset claim journal %s: %w", j.path, err))
					continue
				}
				j.restart, j.failedEnd = false, 0
			}
		}
		off, epoch := j.off, j.epoch
		pad := max(j.failedEnd-off-int64(len(batch)), 0)
		j.mu.Unlock()
		if testHookJournalWrite != nil {
			testHookJournalWrite()
		}
		end := off + int64(len(batch))
		err := j.write(batch, off, epoch, pad)
		if testHookJournalSynced != nil {
			err = testHookJournalSynced(err)
		}
		j.mu.Lock()
		if err != nil {
			j.failedEnd = max(j.failedEnd, end)
			j.fail(batch, from, fmt.Errorf("store: write claim journal %s: %w", j.path, err))
			continue
		}
		j.off = end
		j.synced = upto
		for i := range j.awaited {
			if i < upto {
				delete(j.awaited, i)
			}
		}
		if pad > 0 {
			j.failedEnd = 0
		}
		j.cond.Broadcast()
		if j.buf == nil {
			j.buf = batch[:0] // reuse the buffer
		}
	}
}

// write seals batch for epoch, writes it at off followed by pad zeroes,
// and syncs it.
func (j *journal) write(batch []byte, off int64, epoch uint64, pad int64) error {
	seal(batch, epoch)
	end := off + int64(len(batch))
	if err := j.fill(end + pad); err != nil {
		return err
	}
	if _, err := j.f.WriteAt(append(batch, make([]byte, pad)...), off); err != nil {
		return err
	}
	return fdatasync(j.f)
}

// fail records err for the claim entries of batch, numbered from from,
// and its awaited ones, and wakes their waiters.
//
// Its releases are queued again, as new entries, for the next batch:
// nobody waits for one (an awaited one's waiter gets err all the same),
// and without it a crash would bring its claim back from the journal as
// UnknownOutcome, though the claim was given up and bbolt may have
// deleted it. An entry that moves behind later ones still replays right:
// a release names its claim's token, and every claim entry has its own.
// Only the first requeueMax are queued again, so a journal that keeps
// failing carries a bounded backlog; the others are lost, as before, which
// leaves their claims to read as UnknownOutcome after a crash, never free
// while their call may have run.
func (j *journal) fail(batch []byte, from uint64, err error) {
	if j.failed == nil {
		j.failed = make(map[uint64]error)
	}
	requeued := 0
	for i := from; len(batch) >= 9; i++ {
		n := 8 + binary.BigEndian.Uint32(batch)
		if batch[8] == journalClaim || j.awaited[i] {
			j.failed[i] = err
			delete(j.awaited, i)
		}
		if batch[8] == journalRelease && requeued < j.requeueMax {
			j.buf = append(j.buf, batch[:n]...) // sealed again when written
			j.next++
			requeued++
		}
		batch = batch[n:]
	}
	j.cond.Broadcast()
}

// seal writes the checksums of the entries in batch for epoch.
func seal(batch []byte, epoch uint64) {
	for len(batch) >= 8 {
		n := int(binary.BigEndian.Uint32(batch))
		binary.BigEndian.PutUint32(batch[4:], entrySum(epoch, batch[8:8+n]))
		batch = batch[8+n:]
	}
}

// expectFlush announces a queued commit that will call markFlushed, or
// markUnflushed when it fails or cannot be queued.
func (j *journal) expectFlush() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.marking++
}

// markFlushed records that bbolt has committed every entry before n.
func (j *journal) markFlushed(n uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.marking--
	if n > j.flushed {
		j.flushed = n
	}
	j.cond.Broadcast()
}

// markUnflushed records that a commit announced by expectFlush will not
// move the flushed mark: it failed, or was never queued.
func (j *journal) markUnflushed() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.marking--
	j.cond.Broadcast()
}

// pin keeps the file from starting over: a claim's write to bbolt failed,
// so its entry here is all that records it until a later write of its key
// lands (unpin). A crash or Close meanwhile leaves the entry for the next
// open, whose recovery turns the claim into UnknownOutcome.
func (j *journal) pin() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pinned++
}

// unpin ends one pin.
func (j *journal) unpin() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pinned--
}

// close starts the file over, unless a claim pins it (bbolt holds the rest:
// the caller closes the journal after the last commit), and closes it.
//
// A pinned file is kept for the next open, so it must read back as the
// claims stand: the entries still queued (releases, which nobody waits
// for) are written, over what failed batches may have left after the
// last good one, else the next open revives claims released or refused
// (but not after a failed start-over: the header may be torn).
func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.writing {
		j.cond.Wait()
	}
	if j.err == nil {
		j.err = errJournalClosed
	}
	var err error
	switch {
	case j.pinned == 0:
		err = j.start()
	case !j.restart && (len(j.buf) > 0 || j.failedEnd > j.off):
		err = j.write(j.buf, j.off, j.epoch, max(j.failedEnd-j.off-int64(len(j.buf)), 0))
	}
	return errors.Join(err, j.f.Close())
}

// errJournalClosed is ErrClosed, for a claim caught waiting on the journal
// while the File closes: shutdown, not a failure of the store.
var errJournalClosed = fmt.Errorf("store: claim journal closed: %w", ErrClosed)

// testHookJournalWrite, when set by a test, runs on the leader before each
// batch is written, with j.mu released.
var testHookJournalWrite func()

// testHookJournalSynced, when set by a test, gets the outcome of each
// batch's write and sync, and returns the one the leader acts on.
var testHookJournalSynced func(error) error
