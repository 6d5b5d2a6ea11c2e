//go:build !linux && !freebsd

package bench

import "syscall"

// childAttrs: only Linux and FreeBSD can tie a child's life to the
// harness's; elsewhere a harness killed hard leaves its children running.
func childAttrs() *syscall.SysProcAttr { return nil }
