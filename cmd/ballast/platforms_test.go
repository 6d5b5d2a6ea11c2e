package main

import (
	"os"
	"os/exec"
	"testing"
)

// ballast is developed on Linux and runs there in production, but people
// try it first on their own machines: `go run ./cmd/ballast run` must
// build on macOS and Windows too. Linux-only system calls (raw socket I/O,
// timer slack, Pdeathsig) sit behind build tags with portable fallbacks;
// this keeps them there. Only compiled, never run, here.
func TestBuildsOnMacOSAndWindows(t *testing.T) {
	t.Parallel()
	for _, p := range []struct{ goos, goarch string }{{"darwin", "arm64"}, {"windows", "amd64"}} {
		cmd := exec.Command("go", "build", "./...")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "GOOS="+p.goos, "GOARCH="+p.goarch, "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("go build ./... for %s/%s: %v\n%s", p.goos, p.goarch, err, out)
		}
	}
}
