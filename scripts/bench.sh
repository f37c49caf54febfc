#!/usr/bin/env bash
# make bench: builds lazyroot and the harness, the Debian roots (once,
# cached), then runs every workload as a full pull, lazy cold and lazy warm
# behind an emulated network and prints the table.
#   BENCH_CACHE  cache of roots, layers, blobs, registry (/var/cache/lazyroot-bench)
#   BENCH_RTT    round trip (20ms)      BENCH_RATE  link rate (200mbit)
#   BENCH_ARGS   more lzbench flags, e.g. --workloads python3,gcc --formats estargz
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: run as root (network namespaces, mounts, chroot)" >&2; exit 1; }
export PATH=$PATH:/usr/local/go/bin
export BENCH_CACHE=${BENCH_CACHE:-/var/cache/lazyroot-bench}

scripts/install-deps.sh
for cmd in ip tc chroot; do command -v $cmd >/dev/null || { echo "bench: $cmd is missing" >&2; exit 1; }; done
go build -o bin/lazyroot ./cmd/lazyroot
go build -o bin/lzbench ./bench/cmd/lzbench
scripts/bench-images.sh
# shellcheck disable=SC2086
exec bin/lzbench run --cache "$BENCH_CACHE" --lazyroot bin/lazyroot \
  --rtt "${BENCH_RTT:-20ms}" --rate "${BENCH_RATE:-200mbit}" ${BENCH_ARGS:-}
