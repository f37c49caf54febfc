# lazyroot: build, demo and tests. `make demo` and `make test` install what
# they need (apt) first; run them as root.
GO ?= go
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build deps demo test test-unit lint clean bench

all: build

build:
	$(GO) build -o bin/lazyroot ./cmd/lazyroot
	$(GO) build -o bin/pushimage ./internal/cmd/pushimage

deps:
	scripts/install-deps.sh

demo: deps build
	scripts/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Everything: the race detector on all packages, FUSE mounts and the
# command-line tests included.
# The allocation tests run once more without -race (under -race,
# sync.Pool drops items at random, so they skip there).
test: deps lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'AllocatesNothing' ./fs/ ./layer/

# Fast unit tests of the leaf packages.
test-unit:
	$(GO) test -race -count=1 ./index/ ./cache/ ./fetch/

# The benchmark of issue 6 (root; builds Debian images once under
# /var/cache/lazyroot-bench, then takes a few minutes a run). Not part of
# test. BENCH_RTT, BENCH_RATE, BENCH_CACHE, BENCH_ARGS: see scripts/bench.sh.
bench:
	scripts/bench.sh

clean:
	rm -rf bin
