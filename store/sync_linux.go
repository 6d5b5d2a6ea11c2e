package store

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the metadata needed to read it back),
// skipping the timestamps an fsync would also write.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// fdatasyncHeld is fdatasync without telling the scheduler: the calling
// goroutine keeps its P while the disk syncs.
func fdatasyncHeld(f *os.File) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_FDATASYNC, f.Fd(), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
