#!/usr/bin/env bash
# Installs what building, the demo and the tests need on Debian or Ubuntu:
# FUSE 3, Debian's registry (docker-registry), busybox-static for images made
# of real binaries, gzip and pigz for test layers, and make. Go 1.24 or newer
# must already be installed.
set -euo pipefail

need=()
for pkg in fuse3 docker-registry busybox-static make curl gzip pigz; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH=$PATH:/usr/local/go/bin
fi
if ! command -v go >/dev/null; then
  echo "install-deps: Go is not installed; get Go 1.24 or newer from https://go.dev/dl/" >&2
  exit 1
fi
[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
