#!/usr/bin/env bash
# Builds a minimal Debian bookworm base image locally (debootstrap + docker import), for machines whose
# Docker engine cannot pull from a registry. The container tests build the runtime stage on top of it,
# and use it as the "tester" container that calls a server container's invoke API with curl.
#   scripts/make-base-image.sh [TAG]        (default tag: ctgrade-base:bookworm)
set -euo pipefail
tag=${1:-ctgrade-base:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then
  if docker run --rm --network none "$tag" curl --version >/dev/null 2>&1; then
    echo "base image $tag already present"
    exit 0
  fi
  echo "base image $tag lacks curl: rebuilding it"
fi
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/ctgrade-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$root" "$mirror" >/tmp/debootstrap.log 2>&1 \
  || { tail -20 /tmp/debootstrap.log; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "built base image $tag"
