package bench

import "syscall"

// childAttrs kills a child the harness started when the harness dies
// (Pdeathsig; it follows the thread that started the child).
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
