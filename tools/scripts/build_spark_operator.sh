#!/usr/bin/env bash
# Builds what the node needs to run the Kubeflow Spark Operator as users install it, cached by
# operator version in $DFP_CACHE_DIR/spark-operator/<version>/ (default ~/.cache/dfp):
#   spark-operator  from the vendored release source (../shared/vendor, never copied into this
#                   repository: unpacked into the cache), CGO off, every dependency from the Go
#                   module proxy, pinned by the release's own go.sum;
#   helm            from tools/helm/ (our wrapper module), to install the release's chart;
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
operator_stamp=$archive_sha256
helm_stamp=$(cat "$root/tools/helm/go.mod" "$root/tools/helm/go.sum" | sha256sum | cut -d' ' -f1)
helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2} $1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$root/tools/helm/go.mod" | head -n1)

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
fresh() { [ -x "$out/$1" ] && [ "$(cat "$out/.$1-built" 2>/dev/null)" = "$2" ]; }
if fresh spark-operator "$operator_stamp" && [ -d "$out/src" ] && fresh helm "$helm_stamp"; then
  echo "spark-operator $version: cached binaries in $out" >&2
else
  command -v go >/dev/null 2>&1 || fail "Go is not installed; it is needed once to build the Spark Operator $version (Go >= 1.25)"
  own_caches=true
  if [ -n "${GOMODCACHE:-}" ] || [ -n "${GOCACHE:-}" ]; then own_caches=false; fi
  export GOMODCACHE="${GOMODCACHE:-$cache/spark-operator/go/mod}" GOCACHE="${GOCACHE:-$cache/spark-operator/go/build}"
  export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -modcacherw"
  start=$(date +%s)
  if ! fresh spark-operator "$operator_stamp" || [ ! -d "$out/src" ]; then
    [ -f "$archive" ] || fail "the Spark Operator's release source is not at $archive (../shared/vendor/README.md); set DFP_SPARK_OPERATOR_ARCHIVE to it"
    echo "$archive_sha256  $archive" | sha256sum --check --status \
      || fail "$archive is not the vendored $version release (sha256 differs)"
    rm -rf "$out/src" "$out/src.tmp" && mkdir -p "$out/src.tmp"
    tar -xzf "$archive" -C "$out/src.tmp" --strip-components=1
    echo "spark-operator $version: building the operator from the release source (CGO off)..." >&2
    ( cd "$out/src.tmp" && go mod download && go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitCommit=43afb8bbd32463037d8fb6e414e252c69081882b -X k8s.io/component-base/version.gitTreeState=clean" \
        -o "$out/spark-operator.tmp" ./cmd/operator ) || fail "go build of the Spark Operator $version failed (output above)"
    mv "$out/spark-operator.tmp" "$out/spark-operator"
    mv "$out/src.tmp" "$out/src"
    echo "$operator_stamp" > "$out/.spark-operator-built"
  fi
  if ! fresh helm "$helm_stamp"; then
    echo "spark-operator $version: building helm $helm_version (tools/helm)..." >&2
    ( cd "$root/tools/helm" && go mod download && go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        -o "$out/helm.tmp" helm.sh/helm/v3/cmd/helm ) || fail "go build of helm $helm_version failed (output above)"
    mv "$out/helm.tmp" "$out/helm"
    echo "$helm_stamp" > "$out/.helm-built"
  fi
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
  stamp="$operator_stamp-$(sha256sum "$root/tools/docker/Dockerfile.spark-operator" | cut -c1-16)"
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
