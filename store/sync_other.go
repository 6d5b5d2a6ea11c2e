//go:build !linux

package store

import "os"

// fdatasync flushes f; off Linux, with fsync.
func fdatasync(f *os.File) error { return f.Sync() }
