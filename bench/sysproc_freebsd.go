package bench

import "syscall"

// childAttrs kills a child the harness started when the harness dies.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
