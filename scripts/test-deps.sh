#!/usr/bin/env bash
# test-deps.sh checks what `make test` needs before the suite runs.
#
# It checks that the Go toolchain is present, then walks the list of system
# tools the tests use. A missing tool is reported with the apt-get package
# that provides it; nothing is installed. The list is empty while the suite
# needs only Go: tests that use redis-server or chromium add their entries
# here as "command:package".
set -euo pipefail

if ! command -v go >/dev/null 2>&1; then
	echo "test-deps: go is not installed; ballast needs Go 1.26 or later (https://go.dev/dl/)" >&2
	exit 1
fi
echo "test-deps: $(go version)"

required=()

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
else
	echo "test-deps: would install: apt-get install -y ${missing[*]}"
fi
