#!/usr/bin/env bash
# The lazyroot demo: start Debian's registry on loopback, push an image made
# of this machine's real Debian binaries as eStargz, mount it lazily, run
# commands in it with chroot, show the bytes fetched against the image size,
# and unmount. Then the same files as a plain gzip image: one node indexes
# it and shares the index through the registry, a second node mounts it
# lazily with it, and runs a job in it with lazyroot run. Run as root
# (make demo).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${LAZYROOT_DEMO_PORT:-5055}
work=$(mktemp -d /tmp/lazyroot-demo.XXXXXX)
bin=$PWD/bin
reg_pid=
mnt=$work/mnt
cleanup() {
  for root in "$work/state" "$work/node-b"; do
    if grep -qs " $mnt " /proc/self/mounts; then "$bin/lazyroot" umount --root "$root" "$mnt" 2>/dev/null || true; fi
  done
  if grep -qs " $mnt " /proc/self/mounts; then umount -l "$mnt"; fi
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. start a registry on 127.0.0.1:$port (Debian's docker-registry)"
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null

step "2. build an image from this machine's Debian packages and push it as eStargz"
rootfs=$work/rootfs
mkdir -p "$rootfs"
pkgs="base-files libc6 libcrypt1 libtinfo6 libselinux1 libpcre2-8-0 libacl1 libattr1 libgmp10 perl-base bash coreutils busybox-static tzdata"
for pkg in $pkgs; do
  dpkg -L "$pkg" 2>/dev/null | while read -r f; do
    # Files only, placed where they really live (/lib/x -> /usr/lib/x);
    # directory symlinks such as /lib64 are made below.
    { [ -f "$f" ] || [ -L "$f" ]; } && ! { [ -L "$f" ] && [ -d "$f" ]; } || continue
    d=$(realpath "$(dirname "$f")")
    mkdir -p "$rootfs$d"
    cp -a "$f" "$rootfs$d/"
  done
done
# Debian's merged /usr: the loader and libraries are found through /lib64 and /lib.
for l in bin lib lib64 sbin; do [ -e "$rootfs/$l" ] || ln -s "usr/$l" "$rootfs/$l"; done
mkdir -p "$rootfs/tmp" "$rootfs/root" && chmod 1777 "$rootfs/tmp"
echo "packages: $pkgs"
"$bin/pushimage" --dir "$rootfs" --format estargz "127.0.0.1:$port/demo/debian-tools:latest"

step "3. how lazyroot will read it"
"$bin/lazyroot" inspect --root "$work/state" "127.0.0.1:$port/demo/debian-tools:latest"

step "4. mount it (no layer is downloaded)"
mkdir -p "$mnt"
start=$(date +%s%N)
"$bin/lazyroot" mount --root "$work/state" "127.0.0.1:$port/demo/debian-tools:latest" "$mnt"
echo "mounted in $(( ($(date +%s%N) - start) / 1000000 )) ms"
ls "$mnt"
"$bin/lazyroot" status --root "$work/state" "$mnt"

step "5. run commands in it with chroot"
chroot "$mnt" /usr/bin/env -i PATH=/usr/bin:/bin LANG=C /bin/bash -c 'head -1 /etc/os-release; echo "print qq(perl \$^V says hello from a lazy root\n)" | perl; echo "$(ls /usr/share/zoneinfo | wc -l) zoneinfo entries listed, none read"'

step "6. bytes fetched against the image size"
"$bin/lazyroot" status --root "$work/state" "$mnt"

step "7. unmount"
"$bin/lazyroot" umount --root "$work/state" "$mnt"
grep -qs " $mnt " /proc/self/mounts && { echo "still mounted!"; exit 1; }
echo "unmounted"

gz="127.0.0.1:$port/demo/debian-tools:gzip"
step "8. the same files as a plain gzip image, as most registries hold them"
"$bin/pushimage" --dir "$rootfs" --format gzip "$gz"
"$bin/lazyroot" inspect --root "$work/node-b" "$gz"

step "9. node A indexes it once and shares the index through the registry"
"$bin/lazyroot" index push --root "$work/node-a" "$gz"

step "10. node B (a fresh state root) mounts it without streaming any layer"
"$bin/lazyroot" inspect --root "$work/node-b" "$gz"
"$bin/lazyroot" mount --root "$work/node-b" --index-source registry "$gz" "$mnt"
chroot "$mnt" /usr/bin/env -i PATH=/usr/bin:/bin LANG=C /bin/bash -c 'echo "bash $BASH_VERSION on a lazily mounted plain gzip image"'
"$bin/lazyroot" status --root "$work/node-b" "$mnt"
"$bin/lazyroot" umount --root "$work/node-b" "$mnt"

step "11. a job runner's one command: run a job in the image, writable, cleaned up after"
"$bin/lazyroot" run --root "$work/node-b" --upper "$work/job-upper" -e GREETING=hello "$gz" -- \
  /bin/bash -c 'n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "$GREETING from pid $$, one of $n processes in the job"; echo result > /root/out'
echo "the job's changes, kept in --upper: $(cat "$work/job-upper/diff/root/out")"
"$bin/lazyroot" run --root "$work/node-b" "$gz" -- /bin/bash -c 'exit 42' || echo "exit status passed through: $?"
echo "demo done"
