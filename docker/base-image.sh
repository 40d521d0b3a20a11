#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim-bookworm from Debian packages alone, for hosts that can
# reach a Debian mirror but no image registry (the build machine of this repository is one):
#
#   sudo docker/base-image.sh                 # -> image cobra-base:bookworm
#   docker build --build-arg BASE=cobra-base:bookworm -f docker/Dockerfile.cpu -t cobra:cpu .
#
# debootstrap's minbase plus Debian's own Python 3.11 (python3-dev for Python.h: pydensecrf2 builds
# from source in the images' build stage) and CA certificates; `python` is linked to python3 as in
# the python:* images. Needs root, debootstrap and a running Docker engine.
set -euo pipefail

TAG=${1:-cobra-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /tmp/cobra-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

command -v debootstrap >/dev/null || { echo "error: debootstrap not found: apt-get install -y debootstrap" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: no Docker engine reachable: start dockerd first" >&2; exit 2; }

debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["python3"]' - "$TAG"
docker run --rm "$TAG" python -c "import sys, venv, ssl; print('base ok: python', sys.version.split()[0])"
