#!/usr/bin/env bash
# Builds the stand-in images .ci/compose-check uses for what cannot be pulled here, once:
# a Debian base from debootstrap (the mirror apt uses), then TensorFlow (tensorflow-cpu from
# PyPI), PostgreSQL and Redis on it. Images already present are kept (delete them with
# `docker rmi quanta-standin/...` to rebuild). Needs a running Docker engine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${QUANTA_STANDIN_CACHE:-/var/cache/quanta-compose-check}"
mirror="$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
          /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have quanta-standin/debian:bookworm; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  mkdir -p "$cache"
  if [ ! -s "$cache/debian-bookworm.tar" ]; then
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$cache/debian-bookworm.tar.part" . && rm -rf "$rootfs"
    mv "$cache/debian-bookworm.tar.part" "$cache/debian-bookworm.tar"
  fi
  docker import --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$cache/debian-bookworm.tar" quanta-standin/debian:bookworm >/dev/null
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$here"/*.Dockerfile "$here"/*.sh "$context"/
mkdir -p "$context/extra-ca"
cp /usr/local/share/ca-certificates/*.crt "$context/extra-ca/" 2>/dev/null || true
for name in tensorflow:2.21.0 postgres:16 redis:7; do
  if ! have "quanta-standin/$name"; then
    echo "building the stand-in quanta-standin/$name"
    docker build -q --network host -t "quanta-standin/$name" -f "$context/${name%%:*}.Dockerfile" \
        "$context" >/dev/null
  fi
done
echo "stand-ins ready: $(docker images --format '{{.Repository}}:{{.Tag}}' 'quanta-standin/*' | sort | tr '\n' ' ')"
