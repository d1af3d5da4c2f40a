#!/usr/bin/env bash
# Builds a server (or, for compose, the Docker Compose v2 CLI plugin) pinned by a wrapper
# module under tools/<name>/ from the Go module proxy and caches the binary by version:
# later runs, and other clones, skip the build.
#   usage: tools/scripts/build_go_server.sh lakefs|seaweedfs|compose     prints the binary's path last
# Each wrapper's go.mod pins the upstream module; go.sum (committed) pins every hash.
# lakefs also builds lakeFS's ACL auth server (contrib/auth/acl, the same module) beside it:
# the stack's repository-scoped users (DFP_LAKEFS_ACL=1) live there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
name=${1:?usage: build_go_server.sh lakefs|seaweedfs|compose}
also_pkg=''; also_bin=''
case "$name" in
  lakefs)    upstream=github.com/treeverse/lakefs;     pkg=.;                                  bin=lakefs; env_var=LAKEFS_BIN; probe=--version
             ldflags_version='-X github.com/treeverse/lakefs/pkg/version.Version=%s'
             also_pkg=github.com/treeverse/lakefs/contrib/auth/acl/cmd/acl; also_bin=lakefs-acl ;;
  seaweedfs) upstream=github.com/seaweedfs/seaweedfs;  pkg=github.com/seaweedfs/seaweedfs/weed; bin=weed;   env_var=SEAWEEDFS_BIN; probe=version
             ldflags_version='' ;;
  compose)   upstream=github.com/docker/compose/v5;    pkg=github.com/docker/compose/v5/cmd;   bin=docker-compose; env_var=DOCKER_COMPOSE_PLUGIN; probe=version
             ldflags_version='-X github.com/docker/compose/v5/internal.Version=v%s' ;;
  *) echo "error: unknown server '$name' (expected lakefs, seaweedfs or compose)" >&2; exit 2 ;;
esac
mod="$root/tools/$name"
version=$(awk -v m="$upstream" '($1 == "require" && $2 == m) {print $3} ($1 == m) {print $2}' "$mod/go.mod" | head -n1)
[ -n "$version" ] || { echo "error: cannot read the $name version from $mod/go.mod" >&2; exit 1; }
cache="${DFP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp}"
out="$cache/$name/$version/$bin"

mkdir -p "$(dirname "$out")"
# One build at a time per binary: a second caller (CI pre-builds while `make setup` runs)
# waits here and then finds the cached binary.
exec 9>"$out.lock"
flock 9
also_out="$(dirname "$out")/$also_bin"
if [ -x "$out" ] && "$out" "$probe" >/dev/null 2>&1 && { [ -z "$also_bin" ] || "$also_out" --version >/dev/null 2>&1; }; then
  echo "$name $version: cached binary $out" >&2
  echo "$out"; exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; it is needed once to build $name $version (install Go >= 1.26 from https://go.dev/dl, or set $env_var to an existing $bin binary)" >&2
  exit 1
fi
need=$(awk '$1 == "go" {print $2; exit}' "$mod/go.mod")
have=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "error: Go $have is too old for $name $version (needs >= $need); upgrade Go or export GOTOOLCHAIN=go$need" >&2
  exit 1
fi

cd "$mod"
# Each binary builds with Go caches of its own under the DFP cache, unless the caller names
# caches: once the binary is cached they serve only a rebuild after a pin change, so a
# successful build removes the compile cache and the extracted module trees (several GB in
# all) and keeps the downloaded module zips, from which a rebuild extracts without network.
own_caches=true
if [ -n "${GOMODCACHE:-}" ] || [ -n "${GOCACHE:-}" ]; then own_caches=false; fi
export GOMODCACHE="${GOMODCACHE:-$cache/$name/go/mod}" GOCACHE="${GOCACHE:-$cache/$name/go/build}"
# lakeFS depends on treeverse forks that the public checksum database does not list;
# go.sum (committed) pins their hashes instead. -modcacherw: the trimmed trees can be deleted.
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/treeverse" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -modcacherw"
ldflags="-s -w"
# shellcheck disable=SC2059
[ -z "$ldflags_version" ] || ldflags="$ldflags $(printf -- "$ldflags_version" "${version#v}")"
start=$(date +%s)
echo "$name $version: downloading modules (first build only)..." >&2
go mod download
total=$(go list -deps "$pkg" | wc -l)
echo "$name $version: compiling $total packages (a cold build takes a few minutes)..." >&2
if ! go build -v -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out.tmp" "$pkg" 2>&1 | awk -v total="$total" '
    /^#|: / { print > "/dev/stderr"; next }
    { n++; if (n % 250 == 0 || n == total) { printf "  compiled %d/%d packages\n", n, total > "/dev/stderr"; fflush("/dev/stderr") } }'
then
  echo "error: go build of $name $version failed (output above)" >&2; rm -f "$out.tmp"; exit 1
fi
if [ -n "$also_pkg" ] && ! go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$also_out.tmp" "$also_pkg"; then
  echo "error: go build of $also_pkg ($name $version) failed (output above)" >&2; rm -f "$out.tmp" "$also_out.tmp"; exit 1
fi
[ -z "$also_pkg" ] || mv "$also_out.tmp" "$also_out"
mv "$out.tmp" "$out"
echo "$name $version: built in $(( $(date +%s) - start ))s -> $out" >&2
if $own_caches; then
  go clean -cache
  find "$GOMODCACHE" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
  echo "$name $version: build caches removed; module zips kept in $GOMODCACHE/cache/download ($(du -sm "$GOMODCACHE" | cut -f1) MB)" >&2
fi
echo "$out"
