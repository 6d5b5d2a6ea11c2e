//go:build unix

package rawio

import (
	"syscall"
	"unsafe"
)

// canWrap: the raw system calls below exist here.
const canWrap = true

// sysRead is read(2) on fd into p (len(p) > 0), without the scheduler's
// system-call bookkeeping.
func sysRead(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return n, errno
}

// sysWrite is write(2) on fd from p (len(p) > 0).
func sysWrite(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return n, errno
}

// sysPeek is recvfrom(2) on fd into p (len(p) > 0) with MSG_PEEK and
// MSG_DONTWAIT, retried on EINTR: 0 on a FIN, the bytes pending, or
// EAGAIN when there is nothing to read.
func sysPeek(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EINTR {
			return n, errno
		}
	}
}
