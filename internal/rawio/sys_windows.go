package rawio

import "syscall"

// canWrap: Windows has neither these system calls nor a netpoller that
// waits for a socket to be writable through syscall.RawConn, so Wrap
// leaves connections as they are and ballast runs on the net package's
// own reads and writes (every caller handles an unwrapped connection).
const canWrap = false

func sysRead(uintptr, []byte) (uintptr, syscall.Errno)  { return 0, syscall.EWINDOWS }
func sysWrite(uintptr, []byte) (uintptr, syscall.Errno) { return 0, syscall.EWINDOWS }
func sysPeek(uintptr, []byte) (uintptr, syscall.Errno)  { return 0, syscall.EWINDOWS }
