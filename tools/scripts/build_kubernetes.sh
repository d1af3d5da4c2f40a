#!/usr/bin/env bash
# Builds the one-node cluster's binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, etcd, coredns, pause) from the wrapper module
# tools/kubernetes/ (go.mod pins k8s.io/kubernetes, etcd and CoreDNS; go.sum every hash) in ONE
# `go build`, so the packages they share compile once, and caches them by Kubernetes version
# in $DFP_CACHE_DIR/kubernetes/<version>/ (default ~/.cache/dfp): later runs skip the build.
#   usage: tools/scripts/build_kubernetes.sh        prints the binaries' folder last
# A cold build compiles about 2,900 packages: 10-15 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mod="$root/tools/kubernetes"
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
version=$(awk '($1 == "k8s.io/kubernetes" && $2 ~ /^v/) {print $2; exit}' "$mod/go.mod")
[ -n "$version" ] || fail "cannot read the k8s.io/kubernetes version from $mod/go.mod"
# Our tools (go.mod's tool block) are the packages built; their last path element names each binary.
pkgs=$(awk '/^tool \($/ {on=1; next} on && /^\)/ {on=0} on {print $1}' "$mod/go.mod")
bins=$(for p in $pkgs; do basename "$p"; done)
cache="${DFP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp}"
out="$cache/kubernetes/$version"
# The pins and our own mains: a change to any of them rebuilds, even at the same version.
stamp=$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/cmd/*/main.go | sha256sum | cut -d' ' -f1)

mkdir -p "$out"
# One build at a time: a second caller waits here, then finds the cached binaries.
exec 9>"$out.lock"
flock 9
cached=true
for b in $bins; do [ -x "$out/$b" ] || cached=false; done
if $cached && [ "$(cat "$out/.built" 2>/dev/null)" = "$stamp" ]; then
  echo "kubernetes $version: cached binaries in $out" >&2
  echo "$out"; exit 0
fi
command -v go >/dev/null 2>&1 \
  || fail "Go is not installed; it is needed once to build Kubernetes $version (install Go >= 1.26 from https://go.dev/dl)"
need=$(awk '$1 == "go" {print $2; exit}' "$mod/go.mod")
have=$(go env GOVERSION | sed 's/^go//')
[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" = "$need" ] \
  || fail "Go $have is too old for Kubernetes $version (needs >= $need); upgrade Go or export GOTOOLCHAIN=go$need"

cd "$mod"
# Caches of its own under the DFP cache unless the caller names some; after a successful build
# the compile cache and the extracted module trees go (several GB) and the module zips stay,
# so a rebuild after a pin change extracts without network.
own_caches=true
if [ -n "${GOMODCACHE:-}" ] || [ -n "${GOCACHE:-}" ]; then own_caches=false; fi
export GOMODCACHE="${GOMODCACHE:-$cache/kubernetes/go/mod}" GOCACHE="${GOCACHE:-$cache/kubernetes/go/build}"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -modcacherw"
# The version the binaries report (`kubectl version`, the node's kubeletVersion): k8s reads it
# from these variables, which only its own Makefile sets.
ver=k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$version -X $ver.gitMajor=1 -X $ver.gitMinor=$(echo "$version" | cut -d. -f2) -X $ver.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"
start=$(date +%s)
echo "kubernetes $version: downloading modules (first build only)..." >&2
go mod download || fail "downloading the modules of tools/kubernetes failed (output above)"
total=$(go list -deps $pkgs | wc -l)
echo "kubernetes $version: compiling $total packages into $(echo $bins | wc -w) binaries (a cold build takes 10-15 minutes on 2 cores)..." >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
# shellcheck disable=SC2086
if ! go build -v -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out.tmp/" $pkgs 2>&1 | awk -v total="$total" '
    /^#|: / { print > "/dev/stderr"; next }
    { n++; if (n % 100 == 0 || n == total) { printf "  compiled %d/%d packages\n", n, total > "/dev/stderr"; fflush("/dev/stderr") } }'
then
  rm -rf "$out.tmp"; fail "go build of Kubernetes $version failed (output above)"
fi
for b in $bins; do [ -x "$out.tmp/$b" ] || { rm -rf "$out.tmp"; fail "go build of Kubernetes $version made no $b binary"; }; done
for b in $bins; do mv -f "$out.tmp/$b" "$out/$b"; done
rmdir "$out.tmp"
echo "$stamp" > "$out/.built"
echo "kubernetes $version: built in $(( $(date +%s) - start ))s -> $out" >&2
if $own_caches; then
  go clean -cache
  find "$GOMODCACHE" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
  echo "kubernetes $version: build caches removed; module zips kept in $GOMODCACHE/cache/download ($(du -sm "$GOMODCACHE" | cut -f1) MB)" >&2
fi
echo "$out"
