#!/usr/bin/env bash
# test-deps.sh installs what `make test` needs before the suite runs.
#
# It checks that the Go toolchain is present, then walks the list of system
# tools the tests use, each as "command:apt-package". Missing packages are
# installed with apt-get when the script runs as root (CI does); otherwise
# it prints the command to run and fails, since the suite would fail too.
#
#   chromium   proxy's status page test renders the page in headless chromium
#   redis-server  store, ratelimit and internal/redis* tests start their own
#                 redis-server (internal/redistest)
#   wrk        bench's overhead saturation phase runs wrk -t1 (bench/wrk.go)
#   nginx      bench's overhead and stream scenarios measure nginx beside
#              ballast when it is on PATH (bench/nginx.go); the smoke tests
#              then run it, so its configs are checked, not skipped
#   prlimit    cmd/ballast's resource tests run ballast under a low
#              RLIMIT_NOFILE (resources12_audit_test.go)
set -euo pipefail

if ! command -v go >/dev/null 2>&1; then
	echo "test-deps: go is not installed; ballast needs Go 1.26 or later (https://go.dev/dl/)" >&2
	exit 1
fi
echo "test-deps: $(go version)"

required=(
	"chromium:chromium"
	"redis-server:redis-server"
	"wrk:wrk"
	"nginx:nginx-light"
	"prlimit:util-linux"
)

missing=()
for entry in "${required[@]+"${required[@]}"}"; do
	cmd="${entry%%:*}"
	pkg="${entry#*:}"
	if ! command -v "$cmd" >/dev/null 2>&1; then
		missing+=("$pkg")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "test-deps: nothing to install"
	exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "test-deps: missing ${missing[*]}; install them as root: apt-get update && apt-get install -y ${missing[*]}" >&2
	exit 1
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages with a service (nginx, redis-server) must not start it: the tests
# start their own on free loopback ports, and a daemon left on port 80
# (or one that fails to start) is nobody's. policy-rc.d is Debian's switch
# for that, set only for this install when nothing set it before.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
