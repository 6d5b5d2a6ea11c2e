package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileOptions configure a File store. The zero value uses the defaults.
type FileOptions struct {
	Limits
	// LockTimeout is how long OpenFile waits for another process to release
	// the state file before it gives up with ErrLocked (default 1s).
	LockTimeout time.Duration
	// BatchSize bounds how many writes share one commit (default 1000); 1
	// commits every write alone. Every write but Complete and Release (see
	// SyncComplete) is fsynced before it returns; sharing commits amortises
	// the fsync across concurrent requests.
	BatchSize int
	// BatchDelay, when positive, makes writes use bbolt's DB.Batch, which
	// waits up to BatchDelay for other writes before it commits. The default
	// (0) is a group commit that never makes a claim wait: a write commits
	// at once when no commit is running (but see FlushDelay), and writes
	// arriving during a commit share the next one. That is as fast under load and much faster alone (see the
	// benchmarks), so leave this at 0 unless measurements say otherwise.
	// A positive BatchDelay implies SyncComplete.
	BatchDelay time.Duration
	// FlushDelay is how long queued writes (completions and releases, see
	// SyncComplete, and journaled claims) wait, when no commit is running,
	// for a synchronous write whose commit they can share, before they
	// commit on their own (default: DefaultJournalFlushDelay with the claim
	// journal; else DefaultFlushDelay when runtime.GOMAXPROCS(0) == 1 at
	// OpenFile, and none otherwise; negative: commit at once). On one processor
	// this cuts the commits per keyed request by about a third under load;
	// with more, measurements showed only a loss. It delays only their
	// durability and the wake-up of waiters, never what Claim, Get and Wait
	// read in this process.
	FlushDelay time.Duration
	// CommitGap is the least time between the starts of two group commits
	// (default: DefaultCommitGap when the process runs on one processor,
	// runtime.GOMAXPROCS(0) == 1 at OpenFile, else none; negative: none).
	// On one processor a goroutine in fsync keeps the only P until the Go
	// runtime's monitor takes it back, which it stops doing when every
	// fsync is short: back-to-back fast commits then starve the network,
	// batches shrink to a write or two and throughput collapses (measured:
	// 0.05x the unkeyed rate instead of 0.45x, in about a third of runs).
	// Waiting out the gap parks the leader instead, lets requests in and
	// batches them. A commit slower than the gap never waits; a claim waits
	// at most the gap. With more processors the gap only costs latency.
	CommitGap time.Duration
	// SyncComplete makes Complete and Release return only once their write
	// is fsynced. By default (false) they return once the write is queued
	// for the next group commit: the completion is then visible at once to
	// Claim, Get and Wait in this process, wakes waiters once committed, and
	// is durable within FlushDelay and one group commit. A crash in that
	// window loses only the completion: the claim reads as UnknownOutcome
	// when its lease ends, never as free, so no request runs twice. The
	// claim itself is always durable before Claim returns.
	SyncComplete bool
	// NoJournal makes Claim commit its record to bbolt before it returns,
	// instead of syncing it to the claim journal and committing it in the
	// background (file_journal.go). The journal is used only with the
	// group committer and without SyncComplete; this turns it off there
	// too. Both are equally durable; the journal cuts the wait of a claim
	// under load from two commits' fsyncs to about one small fdatasync.
	NoJournal bool
	// OnAsyncError, when set, is called with the error of a completion or
	// release that failed after Complete or Release had returned (op is
	// "complete" or "release"): ErrNotHeld when the claim was swept or taken
	// over meanwhile, or a failure of the file. It runs on the committing
	// goroutine: it must be quick (count, log) and must not call the File.
	// Nil: such errors are dropped. Errors found before queuing (invalid
	// arguments, ErrTooLarge, ErrNotHeld, ErrClosed) are returned by
	// Complete and Release as usual.
	OnAsyncError func(op, key string, err error)
}

// Defaults of FileOptions.
const (
	DefaultLockTimeout = time.Second
	DefaultBatchSize   = 1000
	DefaultFlushDelay  = time.Millisecond
	DefaultCommitGap   = 500 * time.Microsecond
	// DefaultJournalFlushDelay is FlushDelay's default with the claim
	// journal: no request waits for those commits, and fewer, larger ones
	// leave the disk to the journal's fdatasyncs.
	DefaultJournalFlushDelay = 5 * time.Millisecond
)

// fileFormat marks a bbolt file as a ballast state file.
var (
	bucketMeta    = []byte("meta")
	bucketRecords = []byte("records")
	bucketJobs    = []byte("jobs")
	keyFormat     = []byte("format")
	fileFormat    = []byte("ballast-store/1")
)

// Recovery summarises what OpenFile found in the state file; the caller logs
// it at start-up.
type Recovery struct {
	// Records counts the idempotency records found.
	Records int
	// UnknownOutcome counts the claims that were in flight when the previous
	// process stopped; they now read as UnknownOutcome.
	UnknownOutcome int
	// Jobs counts the jobs found, PendingJobs those queued or running.
	Jobs, PendingJobs int
	// JournalDiscarded: the claim journal's header was damaged, so its
	// entries (the claims of the last few milliseconds before the stop,
	// if any) could not be replayed and are lost; the journal starts over.
	JournalDiscarded bool
}

// File is the Store on a local bbolt file. It survives SIGKILL: a claim and
// a job are fsynced before Claim and PutJob return (a claim to the claim
// journal beside the file, by default; see file_journal.go), and a completion within
// FileOptions.FlushDelay and one group commit after Complete returns
// (before it returns with FileOptions.SyncComplete). A restart reports the claims that were in
// flight, including those whose completion the crash lost, as
// UnknownOutcome; so a crash never makes a request run twice. Close commits
// every queued completion.
//
// File refuses new claims with ErrFull once it holds MaxRecords records
// (expired ones count until Sweep removes them). Only one process may open
// the file at a time.
type File struct {
	path     string
	lim      Limits
	db       *bolt.DB
	tokens   *tokens
	wakeup   *notifier
	closed   atomic.Bool
	recovery Recovery
	// write runs a read-write transaction function, batched (see
	// FileOptions.BatchDelay).
	write func(func(*bolt.Tx) error) error
	// commit is the group committer; nil with FileOptions.BatchDelay.
	commit *committer
	// async: Complete and Release only queue their write (see
	// FileOptions.SyncComplete); pending holds those writes until commit.
	async        bool
	pending      *pendingRecords
	onAsyncError func(op, key string, err error)
	// journal, in async mode, makes claims durable; they reach bbolt in
	// the background (file_journal.go). claimMu serialises claims' read,
	// decision and queueing (which bbolt's writer lock did before), and a
	// completion's or release's check and queueing beside them. records
	// is then the count MaxRecords applies to, kept here because bbolt's
	// lags: +1 when a claim takes a new key, -1 once a release's delete is
	// committed, -n after a sweep.
	journal *journal
	claimMu sync.Mutex
	records atomic.Int64
	// kept, with the journal, holds the releases whose write failed while
	// the file held their claims, for a later commit (file_release.go).
	kept *keptReleases
	// writeFailed is set once a queued claim, completion or release has
	// failed to be written; until then a claim counted as a new key cannot
	// find a record in the file, and its write skips the lookup.
	writeFailed atomic.Bool
}

var _ Store = (*File)(nil)

// OpenFile opens or creates the state file at path. Claims that were in
// flight when the file was last closed become UnknownOutcome (see Recovery).
//
// A file that is not a readable ballast state file gives a *FileError
// wrapping ErrCorrupt that names the file and the operator's choices; a file
// held by another process gives a *FileError wrapping ErrLocked after
// LockTimeout. OpenFile never panics on a bad file.
func OpenFile(path string, opts FileOptions) (*File, error) {
	lim := opts.Limits.withDefaults()
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	db, err := openBolt(path, timeout)
	if err != nil {
		return nil, err
	}
	batchSize := opts.BatchSize
	if batchSize <= 0 {
		batchSize = DefaultBatchSize
	}
	var commit *committer
	write := db.Batch
	if opts.BatchDelay > 0 {
		db.MaxBatchDelay, db.MaxBatchSize = opts.BatchDelay, batchSize
	} else {
		onePs := runtime.GOMAXPROCS(0) == 1
		journaled := !opts.SyncComplete && !opts.NoJournal
		delay := opts.FlushDelay
		switch {
		case delay != 0:
		case journaled:
			delay = DefaultJournalFlushDelay
		case onePs:
			delay = DefaultFlushDelay
		}
		gap := opts.CommitGap
		if gap == 0 && onePs {
			gap = DefaultCommitGap
		}
		commit = newCommitter(db, batchSize, max(delay, 0), max(gap, 0))
		write = commit.do
	}
	// The journal of a previous run is replayed whatever this one's
	// options: it may hold claims that bbolt lacks.
	jr, entries, err := openJournal(journalPath(path))
	if err != nil {
		closeQuietly(db)
		return nil, err
	}
	rec, err := recoverState(db, entries)
	rec.JournalDiscarded = jr.discarded
	if err == nil {
		err = jr.start() // bbolt now holds what the journal had
	}
	if err != nil {
		jr.f.Close()
		closeQuietly(db)
		if errors.Is(err, errBadJournal) {
			return nil, &FileError{Path: journalPath(path), Kind: ErrCorrupt, Err: err, Journal: true}
		}
		if errors.Is(err, ErrCorrupt) {
			return nil, &FileError{Path: path, Kind: ErrCorrupt, Err: err}
		}
		return nil, fmt.Errorf("store: open state file %s: %w", path, err)
	}
	async := commit != nil && !opts.SyncComplete
	if !async || opts.NoJournal {
		if err := jr.f.Close(); err != nil {
			closeQuietly(db)
			return nil, fmt.Errorf("store: close claim journal: %w", err)
		}
		jr = nil
	}
	f := &File{
		path:     path,
		lim:      lim,
		db:       db,
		tokens:   newTokens(),
		wakeup:   newNotifier(),
		recovery: rec,
		write:    write,
		commit:   commit,
		async:    async,
		pending:  newPendingRecords(),
		journal:  jr,

		onAsyncError: opts.OnAsyncError,
	}
	if jr != nil {
		f.kept = newKeptReleases(maxKeptReleases)
		commit.retries = f.kept.take
	}
	f.records.Store(int64(rec.Records))
	return f, nil
}

// openBolt opens the bbolt file, turning a panic on a garbage file into an
// error.
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, &FileError{Path: path, Kind: ErrCorrupt, Err: fmt.Errorf("bbolt panicked: %v", p)}
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, &FileError{Path: path, Kind: ErrLocked, Err: err}
	case errors.Is(err, fs.ErrPermission), errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("store: open state file %s: %w", path, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		// The operating system refused (not a directory, a read-only or
		// full file system, an I/O error): the file is not what is wrong.
		return nil, fmt.Errorf("store: open state file %s: %w", path, err)
	}
	return nil, &FileError{Path: path, Kind: ErrCorrupt, Err: err}
}

func closeQuietly(db *bolt.DB) {
	defer func() { _ = recover() }()
	_ = db.Close()
}

// recoverState checks the file's format, creates the buckets, turns claims
// that were in flight into UnknownOutcome, and recounts records and jobs
// (the counts live in the buckets' sequences). Every record and job is
// decoded, so a damaged one fails the open instead of a later request.
func recoverState(db *bolt.DB, journal []journalEntry) (rec Recovery, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupt, p)
		}
	}()
	err = db.Update(func(tx *bolt.Tx) error {
		if err := checkFormat(tx); err != nil {
			return err
		}
		records := tx.Bucket(bucketRecords)
		if err := replayJournal(records, journal); err != nil {
			return err
		}
		var lost []*Record
		err := records.ForEach(func(k, v []byte) error {
			r, err := decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			rec.Records++
			if r.State == InFlight {
				r.State = UnknownOutcome
				lost = append(lost, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range lost {
			if err := records.Put([]byte(r.Key), appendRecord(nil, r)); err != nil {
				return err
			}
		}
		rec.UnknownOutcome = len(lost)
		jobs := tx.Bucket(bucketJobs)
		err = jobs.ForEach(func(k, v []byte) error {
			j, err := decodeJob(string(k), v)
			if err != nil {
				return err
			}
			rec.Jobs++
			if j.State.Pending() {
				rec.PendingJobs++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := records.SetSequence(uint64(rec.Records)); err != nil {
			return err
		}
		return jobs.SetSequence(uint64(rec.Jobs))
	})
	return rec, err
}

// checkFormat accepts an empty file (and initialises it) or a ballast state
// file of the current format.
func checkFormat(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		var foreign []string
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			foreign = append(foreign, string(name))
			return nil
		})
		if len(foreign) > 0 {
			return fmt.Errorf("%w: bbolt file with buckets %q is not a ballast state file", ErrCorrupt, foreign)
		}
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return err
		}
		if err := meta.Put(keyFormat, fileFormat); err != nil {
			return err
		}
	} else if got := meta.Get(keyFormat); !bytes.Equal(got, fileFormat) {
		return fmt.Errorf("%w: format %q, want %q", ErrCorrupt, got, fileFormat)
	}
	for _, name := range [][]byte{bucketRecords, bucketJobs} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// Path returns the state file's path.
func (f *File) Path() string { return f.path }

// Owner returns the instance id written into this store's claims.
func (f *File) Owner() string { return f.lim.Owner }

// Recovery returns what OpenFile found in the state file.
func (f *File) Recovery() Recovery { return f.recovery }

// Close implements Store. It is idempotent. It waits for the writes already
// queued, including the completions and releases that Complete and Release
// returned before their commit, and wakes their waiters, then closes the
// file.
func (f *File) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return nil
	}
	if f.commit != nil {
		f.flushKept()
		f.commit.close()
	}
	var jerr error
	if f.journal != nil {
		jerr = f.journal.close() // after the last commit: bbolt has it all
	}
	f.wakeup.closeAll()
	if err := errors.Join(jerr, f.db.Close()); err != nil {
		return fmt.Errorf("store: close state file %s: %w", f.path, err)
	}
	return nil
}
