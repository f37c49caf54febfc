#!/usr/bin/env bash
# Builds the Debian roots the benchmark's images are made of, each one the
# previous root plus some packages, and caches them under $BENCH_CACHE/roots:
#   base   debootstrap --variant=minbase bookworm
#   python base + python3
#   gcc    python + gcc libc6-dev (and /opt/bench/hello.c)
#   large  gcc + a JDK, scientific Python and libLLVM (about 1 GiB more)
# A root that exists is kept, so a second run skips debootstrap and apt.
# The layers themselves are the differences of successive roots
# (bench/cmd/lzbench layers).
set -euo pipefail

CACHE=${BENCH_CACHE:-/var/cache/lazyroot-bench}
MIRROR=${BENCH_MIRROR:-http://deb.debian.org/debian}
SUITE=${BENCH_SUITE:-bookworm}
PY_PKGS=${BENCH_PY_PKGS:-python3}
GCC_PKGS=${BENCH_GCC_PKGS:-gcc libc6-dev}
LARGE_PKGS=${BENCH_LARGE_PKGS:-openjdk-17-jdk-headless python3-scipy python3-pandas python3-matplotlib python3-sklearn libllvm14}
ROOTS=$CACHE/roots
mkdir -p "$ROOTS"

command -v debootstrap >/dev/null || {
  echo "bench-images: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

mounted=()
cleanup() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m=${mounted[i]}
    umount -l "$m" 2>/dev/null || true
  done
  mounted=()
}
trap cleanup EXIT

# install_into ROOT PKGS...: apt-get install in a chroot of ROOT.
install_into() {
  local root=$1; shift
  for d in proc sys dev; do
    mount --rbind "/$d" "$root/$d"; mount --make-rslave "$root/$d"; mounted+=("$root/$d")
  done
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $* >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"
  rm -f "$root/usr/sbin/policy-rc.d"
  cleanup
}

# stage NAME PARENT PKGS: ROOTS/NAME = ROOTS/PARENT + PKGS.
stage() {
  local name=$1 parent=$2 pkgs=$3
  [ -d "$ROOTS/$name" ] && return 0
  echo "bench-images: building $name ($parent + $pkgs)"
  rm -rf "$ROOTS/$name.tmp"
  cp -a "$ROOTS/$parent" "$ROOTS/$name.tmp"
  install_into "$ROOTS/$name.tmp" "$pkgs"
  if [ "$name" = gcc ]; then
    mkdir -p "$ROOTS/$name.tmp/opt/bench"
    printf '#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\nint main(void) {\n\tprintf("hello\\n");\n\treturn 0;\n}\n' >"$ROOTS/$name.tmp/opt/bench/hello.c"
  fi
  mv "$ROOTS/$name.tmp" "$ROOTS/$name"
}

if [ ! -d "$ROOTS/base" ]; then
  echo "bench-images: debootstrap --variant=minbase $SUITE (slow, once)"
  rm -rf "$ROOTS/base.tmp"
  debootstrap --variant=minbase "$SUITE" "$ROOTS/base.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$ROOTS/base.tmp/var/cache/apt/archives/"*.deb "$ROOTS/base.tmp/var/lib/apt/lists/"* 
  mv "$ROOTS/base.tmp" "$ROOTS/base"
fi
stage python base "$PY_PKGS"
stage gcc python "$GCC_PKGS"
stage large gcc "$LARGE_PKGS"
du -sh "$ROOTS"/{base,python,gcc,large} 2>/dev/null || true
