#!/usr/bin/env bash
# A/B cold starts by hand, against the registry `bin/lzbench serve` brings
# up behind the emulated network (start it first; it prints the address).
#
#   scripts/ab-cold.sh [-n ROUNDS] TAG=BINARY... -- [IMAGE:FORMAT...]
#
# Each round mounts every IMAGE:FORMAT (default python:estargz and
# python:gzip) once with each binary, in turn, on an empty --root, runs
# python3 -c 'print(1)' in a chroot of it and unmounts; then it prints,
# per binary and image, the medians of the whole start, the mount, the
# job, and the registry's requests and bytes (from the proxy's counters).
# Interleaving the binaries matters on a noisy machine: compare medians of
# one call, not numbers of different calls.
#   AB_REGISTRY  the registry behind the network (10.201.0.2:5000)
#   AB_STATS     the proxy's counters (http://10.201.0.2:5002/stats)
#   AB_JOB       the job, run by chroot (env -i PATH=... LC_ALL=C python3 -c 'print(1)')
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ab-cold: run as root (mounts, chroot)" >&2; exit 1; }
reg=${AB_REGISTRY:-10.201.0.2:5000}
stats=${AB_STATS:-http://10.201.0.2:5002/stats}
rounds=5
if [ "${1:-}" = -n ]; then rounds=$2; shift 2; fi
bins=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do bins+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(python:estargz python:gzip)
[ ${#bins[@]} -gt 0 ] || { echo "usage: ab-cold.sh [-n ROUNDS] TAG=BINARY... -- [IMAGE:FORMAT...]" >&2; exit 2; }
curl -sf "$stats" >/dev/null || { echo "ab-cold: no proxy counters at $stats: is 'bin/lzbench serve' running?" >&2; exit 1; }
job=${AB_JOB:-/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C python3 -c print(1)}

now() { date +%s.%N; }
counters() { curl -sf "$stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["requests"], s["bodyBytes"])'; }

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for ((i = 1; i <= rounds; i++)); do
  for img in "${images[@]}"; do
    for b in "${bins[@]}"; do
      tag=${b%%=*} bin=${b#*=}
      root=$(mktemp -d /tmp/ab-root.XXXX) dir=$(mktemp -d /tmp/ab-dir.XXXX)
      read -r r0 b0 < <(counters)
      t0=$(now)
      if ! "$bin" mount --root "$root" --insecure-registry "$reg" "$reg/bench/$img" "$dir" >/dev/null; then
        echo "ab-cold: $tag could not mount $img" >&2; rm -rf "$root" "$dir"; exit 1
      fi
      t1=$(now)
      # shellcheck disable=SC2086
      chroot "$dir" $job >/dev/null
      t2=$(now)
      read -r r1 b1 < <(counters)
      "$bin" umount --root "$root" "$dir" >/dev/null
      rm -rf "$root" "$dir"
      echo "$tag $img $t0 $t1 $t2 $((r1 - r0)) $((b1 - b0))" >>"$results"
    done
  done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tag, img, t0, t1, t2, req, byt = line.split()
    t0, t1, t2 = float(t0), float(t1), float(t2)
    rows[(tag, img)].append((t2 - t0, t1 - t0, t2 - t1, int(req), int(byt)))
print("%-12s %-16s %3s %8s %8s %8s %8s %10s" % ("binary", "image", "n", "total", "mount", "job", "requests", "bytes"))
for (tag, img), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    med = [statistics.median(x[k] for x in v) for k in range(5)]
    print("%-12s %-16s %3d %7.3fs %7.3fs %7.3fs %8d %10d" % (tag, img, len(v), med[0], med[1], med[2], med[3], med[4]))
PY
