package main

import "runtime/debug"

// version is set at build time with -ldflags "-X main.version=..." (make
// build and the Dockerfile do); "dev" otherwise.
var version = "dev"

// ballastVersion is version, or, when the build did not set it, what the
// Go toolchain recorded in the binary (see buildVersion); "dev" when
// neither says anything.
func ballastVersion() string {
	if version != "dev" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		if v := buildVersion(info); v != "" {
			return v
		}
	}
	return version
}

// buildVersion names the build from its build info: the main module's
// version (a tag or pseudo-version, as go install and VCS-stamped builds
// record it), else the first 12 characters of the VCS revision with
// "-dirty" when the tree had uncommitted changes. It returns "" when info
// has neither (a build outside a repository).
func buildVersion(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return ""
	}
	rev = rev[:min(len(rev), 12)]
	if dirty {
		rev += "-dirty"
	}
	return rev
}
