package store

import (
	"errors"
	"strings"
	"testing"
)

// TestCorruptJobErrorNamesOnlyItsRef: a job that does not decode is named
// in the error (which reaches ballast's log) by its JobRef, never its
// whole id, the capability to read its result.
func TestCorruptJobErrorNamesOnlyItsRef(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	_, err := decodeJob(id, []byte{codecVersion, 0xff})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decodeJob of garbage: %v, want ErrCorrupt", err)
	}
	if msg := err.Error(); strings.Contains(msg, id) || !strings.Contains(msg, "job 01234567:") {
		t.Errorf("error %q: want the job named by its first 8 digits alone", msg)
	}
	for in, want := range map[string]string{id: "01234567", "short": "short", "": ""} {
		if got := JobRef(in); got != want {
			t.Errorf("JobRef(%q) = %q, want %q", in, got, want)
		}
	}
}
