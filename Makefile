# ballast — build, test and run.
#
#   make build   the static binary ./ballast (the same go build the Dockerfile runs)
#   make test    the whole test suite, with the race detector
#   make vet     gofmt check and go vet
#   make bench   every benchmark, with allocation counts
#   make run     run ballast on ./ballast.yaml, else the embedded default config
#   make docker  build the container image (tag: ballast)

.PHONY: build test test-deps vet bench run docker clean

# VERSION is what `ballast version` prints: the git description of the
# checkout, or dev outside one.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o ./ballast ./cmd/ballast

test: test-deps
	go test -race -count=1 -timeout 20m ./...
	# The allocation gates are built without the race detector (it allocates).
	go test -count=1 -run 'Alloc' ./...

# test-deps checks the toolchain and lists the system packages the suite
# needs; see scripts/test-deps.sh.
test-deps:
	bash scripts/test-deps.sh

vet:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	go vet ./...

bench:
	go test -run '^$$' -bench . -benchmem ./...

run:
	go run ./cmd/ballast run

docker:
	docker build --build-arg VERSION=$(VERSION) -t ballast .

clean:
	rm -f ./ballast
