package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrProc reports /proc figures that could not be read.
var ErrProc = errors.New("bench: /proc")

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// Linux fixes it at 100 for user space on every architecture.
const clockTick = 10 * time.Millisecond

// ProcUsage is the resource use of a process tree at one moment.
type ProcUsage struct {
	// CPU is user plus system time, summed over the process and its
	// descendants still running (nginx's workers, for example), plus
	// that of the descendants that have exited and been waited for
	// (cutime and cstime), so that it never goes backwards.
	CPU time.Duration
	// PeakRSS is VmHWM, the peak resident set, summed over the tree.
	PeakRSS int64
}

// ReadProcUsage reads the usage of pid and its descendants from /proc.
func ReadProcUsage(pid int) (ProcUsage, error) {
	return readProcUsage("/proc", pid)
}

func readProcUsage(root string, pid int) (ProcUsage, error) {
	var u ProcUsage
	pids := append([]int{pid}, descendants(root, pid)...)
	for i, p := range pids {
		cpu, err := procCPU(root, p)
		if err != nil {
			if i == 0 {
				return u, err
			}
			continue // a child that just exited
		}
		u.CPU += cpu
		if hwm, err := procHWM(root, p); err == nil {
			u.PeakRSS += hwm
		}
	}
	return u, nil
}

// procCPU is utime+stime+cutime+cstime of one process: all its threads
// and its waited-for children.
func procCPU(root string, pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", root, pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	f, err := statFields(b)
	if err != nil {
		return 0, err
	}
	// Fields after "(comm)" start at field 3 (state); utime, stime,
	// cutime and cstime are fields 14 to 17, so indexes 11 to 14 here.
	if len(f) < 15 {
		return 0, fmt.Errorf("%w: %d/stat has %d fields", ErrProc, pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %d/stat: bad utime/stime/cutime/cstime", ErrProc, pid)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// statFields returns the fields of a stat line after the command name,
// which may itself contain spaces and parentheses.
func statFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("%w: stat line without (comm)", ErrProc)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// procPPID returns the parent of pid.
func procPPID(root string, pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", root, pid))
	if err != nil {
		return 0, err
	}
	f, err := statFields(b)
	if err != nil || len(f) < 2 {
		return 0, fmt.Errorf("%w: %d/stat: no ppid", ErrProc, pid)
	}
	return strconv.Atoi(f[1])
}

// ReadRSS is the current resident set (VmRSS) of pid in bytes.
func ReadRSS(pid int) (int64, error) { return procStatusBytes("/proc", pid, "VmRSS:") }

// procHWM is VmHWM in bytes.
func procHWM(root string, pid int) (int64, error) { return procStatusBytes(root, pid, "VmHWM:") }

// procStatusBytes reads a "Field:  N kB" line of /proc/<pid>/status.
func procStatusBytes(root string, pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/status", root, pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				break
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%w: %d/status has no %s", ErrProc, pid, strings.TrimSuffix(field, ":"))
}

// descendants lists the running descendants of pid by scanning /proc.
func descendants(root string, pid int) []int {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, err := procPPID(root, p); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}
