#!/usr/bin/env bash
# Builds what the node needs to run the Kubeflow Spark Operator as users install it, cached by
# operator version in $DFP_CACHE_DIR/spark-operator/<version>/ (default ~/.cache/dfp):
#   spark-operator  from the vendored release source (../shared/vendor, never copied into this
#                   repository: unpacked into the cache), CGO off, every dependency from the Go
#                   module proxy, pinned by the release's own go.mod/go.sum;
#   helm            the helm the release's own end-to-end tests install its chart with (its go.mod
#                   requires helm.sh/helm/v3), built in the same `go build`, so the Kubernetes
#                   libraries they share compile once;
#   src/            the unpacked release: its chart (CRDs inside), Dockerfile and entrypoint.sh.
# With --image it also builds the image dfp/spark-operator:<version> FROM the project's Spark
# image (dfp/kronodroid-spark, `make images`), as the release's Dockerfile does FROM apache/spark.
#   usage: tools/scripts/build_spark_operator.sh [--image]      prints the cache folder last
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
version=v2.5.2
# The release archive as vendored: git archive v2.5.2 (commit 43afb8bb) of kubeflow/spark-operator.
archive_sha256=ed233ab7e24c0dd97aee04290b5eb7d33f0fa8ab17647639cf4f353c2a1aa70e
archive=${DFP_SPARK_OPERATOR_ARCHIVE:-$root/../shared/vendor/spark-operator-$version.tar.gz}
spark_image=${DFP_SPARK_IMAGE:-dfp/kronodroid-spark:0.1.0}
image="dfp/spark-operator:${version#v}"
want_image=false
[ "${1:-}" = "--image" ] && want_image=true
cache="${DFP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp}"
out="$cache/spark-operator/$version"
commit=43afb8bbd32463037d8fb6e414e252c69081882b

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
if [ -x "$out/spark-operator" ] && [ -x "$out/helm" ] && [ -d "$out/src" ] && [ "$(cat "$out/.built" 2>/dev/null)" = "$archive_sha256" ]; then
  echo "spark-operator $version: cached binaries in $out" >&2
else
  [ -f "$archive" ] || fail "the Spark Operator's release source is not at $archive (../shared/vendor/README.md); set DFP_SPARK_OPERATOR_ARCHIVE to it"
  echo "$archive_sha256  $archive" | sha256sum --check --status \
    || fail "$archive is not the vendored $version release (sha256 differs)"
  command -v go >/dev/null 2>&1 || fail "Go is not installed; it is needed once to build the Spark Operator $version (Go >= 1.24)"
  own_caches=true
  if [ -n "${GOMODCACHE:-}" ] || [ -n "${GOCACHE:-}" ]; then own_caches=false; fi
  export GOMODCACHE="${GOMODCACHE:-$cache/spark-operator/go/mod}" GOCACHE="${GOCACHE:-$cache/spark-operator/go/build}"
  export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -modcacherw"
  start=$(date +%s)
  rm -rf "$out/src" "$out/src.tmp" "$out/bin.tmp" && mkdir -p "$out/src.tmp" "$out/bin.tmp"
  tar -xzf "$archive" -C "$out/src.tmp" --strip-components=1
  helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$out/src.tmp/go.mod")
  [ -n "$helm_version" ] || fail "the Spark Operator $version's go.mod names no helm.sh/helm/v3"
  echo "spark-operator $version: building the operator and helm $helm_version from the release's module (CGO off)..." >&2
  ver=k8s.io/component-base/version
  # The operator builds from the release's go.sum alone (checked first, read-only); helm's command
  # needs a few modules more (plugin installers, docs) whose go.sum lines the release, which uses
  # helm's library, does not carry: they come at the versions its module graph names, checked
  # against the Go checksum database like every download.
  ( cd "$out/src.tmp" && go mod download && go list -deps ./cmd/operator >/dev/null \
      && GOFLAGS="${GOFLAGS/-mod=readonly/-mod=mod}" go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X $ver.gitVersion=$version -X $ver.gitCommit=$commit -X $ver.gitTreeState=clean -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      -o "$out/bin.tmp/" ./cmd/operator helm.sh/helm/v3/cmd/helm ) \
    || fail "go build of the Spark Operator $version failed (output above)"
  mv "$out/bin.tmp/operator" "$out/spark-operator"
  mv "$out/bin.tmp/helm" "$out/helm"
  rmdir "$out/bin.tmp"
  mv "$out/src.tmp" "$out/src"
  echo "$archive_sha256" > "$out/.built"
  echo "spark-operator $version: built in $(( $(date +%s) - start ))s -> $out" >&2
  if $own_caches; then
    go clean -cache
    find "$GOMODCACHE" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
  fi
fi

if $want_image; then
  docker image inspect "$spark_image" >/dev/null 2>&1 \
    || fail "the Docker engine has no $spark_image, which the operator image is built on; build it first (tools/scripts/build_images.sh spark)"
  spark_id=$(docker image inspect --format '{{.Id}}' "$spark_image")
  # The image follows the binary, the release's entrypoint and our Dockerfile.
  stamp=$(cat "$out/spark-operator" "$out/src/entrypoint.sh" "$root/tools/docker/Dockerfile.spark-operator" | sha256sum | cut -c1-32)
  have=$(docker image inspect --format '{{index .Config.Labels "dfp.spark-operator.base"}},{{index .Config.Labels "dfp.spark-operator.build"}}' "$image" 2>/dev/null || true)
  if [ "$have" = "$spark_id,$stamp" ]; then
    echo "spark-operator $version: image $image is up to date" >&2
  else
    context=$(mktemp -d)
    trap 'rm -rf "$context"' EXIT
    cp "$out/spark-operator" "$out/src/entrypoint.sh" "$context/"
    cp "$root/tools/docker/Dockerfile.spark-operator" "$context/Dockerfile"
    echo "spark-operator $version: building image $image FROM $spark_image..." >&2
    # The engine's BuildKit build command (docker buildx, or DOCKER_BUILDKIT=1 docker build).
    read -r -a builder < <("$root/tools/scripts/docker_engine.sh" --print-builder | tail -n 1) \
      || fail "no usable Docker engine (see above)"
    "${builder[@]}" --progress=plain --build-arg "SPARK_IMAGE=$spark_image" \
      --label "dfp.spark-operator.base=$spark_id" --label "dfp.spark-operator.build=$stamp" \
      -t "$image" "$context" >"$context/build.log" 2>&1 \
      || { tail -n 20 "$context/build.log" >&2; fail "docker build of $image failed (output above)"; }
    echo "spark-operator $version: image $image built" >&2
  fi
fi
echo "$out"
