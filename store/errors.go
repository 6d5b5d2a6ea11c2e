package store

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrMismatch: the key is held by a request with another fingerprint
	// (422 idempotency_mismatch at the proxy).
	ErrMismatch = errors.New("store: idempotency key reused with a different request")
	// ErrNotHeld: Complete or Release on a claim that was released, swept or
	// taken over.
	ErrNotHeld = errors.New("store: claim no longer held")
	// ErrNotFound: no live record or job with that key or id.
	ErrNotFound = errors.New("store: not found")
	// ErrTooLarge: a response or job is larger than MaxResponseBytes and is
	// not stored; the caller passes the response through.
	ErrTooLarge = errors.New("store: too large to store")
	// ErrFull: the store holds its maximum number of records or jobs and
	// refuses new ones (503 state_unavailable at the proxy).
	ErrFull = errors.New("store: full")
	// ErrInvalid: an argument is unusable (empty or oversized key, nil
	// record, invalid job state).
	ErrInvalid = errors.New("store: invalid argument")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
	// ErrCorrupt: the state file is not a readable ballast state file.
	ErrCorrupt = errors.New("store: state file corrupt or unreadable")
	// ErrLocked: another process holds the state file.
	ErrLocked = errors.New("store: state file locked by another process")
)

// FileError is the error OpenFile returns when the state file cannot be
// used. Its message names the file and what the operator can do;
// errors.Is(err, ErrCorrupt) or errors.Is(err, ErrLocked) tells which case.
type FileError struct {
	// Path is the state file, or its claim journal when Journal is set.
	Path string
	// Kind is ErrCorrupt or ErrLocked.
	Kind error
	// Err is the cause.
	Err error
	// Journal: the damaged file is the claim journal beside the state
	// file (<path>.claims), not the state file itself.
	Journal bool
}

// errBadJournal marks a claim journal entry that passed its checksum but
// cannot be applied (a record from another ballast version, an unknown
// kind): the journal, not the state file, is what is damaged.
var errBadJournal = fmt.Errorf("%w: claim journal entry", ErrCorrupt)

func (e *FileError) Error() string {
	if e.Journal {
		cause := strings.TrimPrefix(fmt.Sprint(e.Err), errBadJournal.Error()+": ")
		return fmt.Sprintf("store: claim journal %s is corrupt (%s): move it aside (mv %s %s.bad) to start without it; the claims only it holds then read as never made, so an agent's retry of one of them could run its call again", e.Path, cause, e.Path, e.Path)
	}
	if e.Kind == ErrLocked {
		return fmt.Sprintf("store: state file %s is locked by another process (%v): stop the other ballast using it, or point state.path elsewhere", e.Path, e.Err)
	}
	cause := strings.TrimPrefix(fmt.Sprint(e.Err), ErrCorrupt.Error()+": ")
	return fmt.Sprintf("store: state file %s is corrupt or not a ballast state file (%s): move it aside (mv %s %s.bad) to start with empty state, or fix it or restore it from a backup", e.Path, cause, e.Path, e.Path)
}

// Unwrap returns Kind and the cause.
func (e *FileError) Unwrap() []error { return []error{e.Kind, e.Err} }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func checkKey(what, key string) error {
	if len(key) == 0 || len(key) > MaxKeyBytes {
		return invalidf("%s length %d, want 1..%d", what, len(key), MaxKeyBytes)
	}
	return nil
}

func tooLarge(what string, size, limit int) error {
	return fmt.Errorf("%w: %s of %d bytes exceeds the limit of %d", ErrTooLarge, what, size, limit)
}
