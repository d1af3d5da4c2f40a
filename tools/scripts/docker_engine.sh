#!/usr/bin/env bash
# A running Docker engine and a BuildKit client, idempotent: does only what is missing.
#   - no engine: installs Debian's docker.io (needs root and apt);
#   - engine not running: starts dockerd in the background (needs root; log in /var/log/dfp-dockerd.log);
#   - with --compose, the `docker compose` v2 plugin: the CLI's own if it has one, else Compose built
#     from the Go module proxy (tools/compose/, pinned, cached) and installed as a CLI plugin for
#     this user (Debian bookworm packages only Compose v1);
#   - a BuildKit client: the buildx plugin if the CLI has it; else a Docker CLI that drives the
#     engine's own BuildKit (DOCKER_BUILDKIT=1, as Debian's docker.io client does); else buildx is
#     built from the Go module proxy (pinned, cached in ~/.cache/dfp/buildx/) and installed as a
#     CLI plugin for this user.
# With --print-builder, the last stdout line is the build command to use (words separated by
# spaces), e.g. `docker buildx build --load` or `env DOCKER_BUILDKIT=1 /usr/bin/docker build`.
# Each failure is one line naming the cause and what fixes it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BUILDX_VERSION=v0.38.2
cache=${DFP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp}
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }
as_root() { [ "$(id -u)" = 0 ]; }
print_builder=false
want_compose=false
for arg in "$@"; do
  case "$arg" in
    --print-builder) print_builder=true ;;
    --compose) want_compose=true ;;
    *) fail "usage: docker_engine.sh [--compose] [--print-builder]" ;;
  esac
done

if ! command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
  as_root || fail "no Docker engine: install one (Debian: sudo apt-get install docker.io) or run this script as root"
  command -v apt-get >/dev/null || fail "no Docker engine and no apt-get to install docker.io; install Docker for your system"
  say "installing Debian's docker.io"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || fail "apt-get update failed; check the Debian mirror in /etc/apt/sources.list.d/"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null \
    || fail "apt-get install docker.io failed"
fi

if ! docker info >/dev/null 2>&1; then
  as_root || fail "the Docker engine is not running: start it (sudo systemctl start docker, or run this script as root)"
  say "starting dockerd (log: /var/log/dfp-dockerd.log)"
  nohup dockerd >/var/log/dfp-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not come up in 60s: $(tail -n 3 /var/log/dfp-dockerd.log | tr '\n' ' ')"
fi

# A Docker CLI that runs BuildKit builds through the engine itself (no buildx plugin needed):
# the classic client with DOCKER_BUILDKIT=1. A newer CLI without buildx refuses, so try each.
engine_buildkit_client() {
  local client
  for client in "$(command -v docker)" /usr/bin/docker; do
    [ -x "$client" ] || continue
    if DOCKER_BUILDKIT=1 "$client" build --help 2>/dev/null | grep -q -- '--secret'; then
      echo "$client"
      return 0
    fi
  done
  return 1
}

if docker buildx version >/dev/null 2>&1; then
  builder="docker buildx build --load"
elif client=$(engine_buildkit_client); then
  builder="env DOCKER_BUILDKIT=1 $client build"
else
  plugin="$cache/buildx/$BUILDX_VERSION/docker-buildx"
  if [ ! -x "$plugin" ]; then
    command -v go >/dev/null || fail "no BuildKit client: docker buildx is missing and Go is not installed to build it; install the docker-buildx plugin"
    say "building docker buildx $BUILDX_VERSION from the Go module proxy (first time only)"
    mkdir -p "$(dirname "$plugin")"
    GOBIN="$(dirname "$plugin")" go install \
      -ldflags "-X github.com/docker/buildx/version.Version=$BUILDX_VERSION" \
      "github.com/docker/buildx/cmd/buildx@$BUILDX_VERSION" || fail "building docker buildx failed (see above)"
    mv "$(dirname "$plugin")/buildx" "$plugin"
  fi
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$plugin" "$HOME/.docker/cli-plugins/docker-buildx"
  docker buildx version >/dev/null 2>&1 || fail "docker buildx does not run from $plugin"
  builder="docker buildx build --load"
fi
say "docker: engine $(docker version --format '{{.Server.Version}}'), builds with: $builder"
if $want_compose && ! docker compose version >/dev/null 2>&1; then
  plugin=$("$root/tools/scripts/build_go_server.sh" compose | tail -n 1) \
    || fail "no docker compose plugin and building it from the Go module proxy failed (see above); install docker-compose-plugin"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
  docker compose version >/dev/null 2>&1 || fail "docker compose does not run from $plugin"
fi
$want_compose && say "docker compose: $(docker compose version --short)"
if $print_builder; then echo "$builder"; fi
