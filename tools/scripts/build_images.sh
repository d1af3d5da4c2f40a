#!/usr/bin/env bash
# `make images`: the training, Spark and MLflow images, tagged with the project version and
# `latest`, with BuildKit (layer cache reused between builds).
#
#   tools/scripts/build_images.sh [train] [spark] [mlflow] [postgres] [seaweedfs] [lakefs]
#
# Default: train, spark and mlflow. postgres, seaweedfs and lakefs stand in for the images
# docker-compose.yml pulls, where they cannot be pulled (docker-compose.built-images.yml);
# seaweedfs and lakefs package the binaries tools/scripts/build_go_server.sh builds.
#
# DFP_BASE_IMAGE   base of every image (default python:3.11.17-slim-bookworm). Where it cannot be
#                  pulled, a base is built from Debian packages (debootstrap, needs root) and used.
# DFP_CA_BUNDLE    CA bundle the builds trust for PyPI and Maven Central, passed as a BuildKit
#                  secret, never stored in a layer (default: /etc/ssl/certs/ca-certificates.crt
#                  when it exists).
# DFP_MAVEN_REPO   Maven mirror for the Spark jars.
# DFP_IMAGES_KEEP_FREE_MB  free disk (MB) the builds must leave for other work (default 0); the
#                  test suite keeps room for the tests that run after the container tests.
# The last stdout line is a JSON summary: per image its tag, build seconds and size.
# Exit status 75: not enough free disk under Docker's data root for these builds (checked first).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*" >&2; }

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(train spark mlflow)
for image in "${images[@]}"; do
  case "$image" in train|spark|mlflow|postgres|seaweedfs|lakefs) ;;
    *) fail "unknown image '$image': expected train, spark, mlflow, postgres, seaweedfs or lakefs" ;; esac
done

# The engine (installed and started if need be) and the BuildKit build command it offers.
read -r -a builder < <("$root/tools/scripts/docker_engine.sh" --print-builder | tail -n 1) \
  || fail "no usable Docker engine (see above)"
[ ${#builder[@]} -gt 0 ] || fail "no usable Docker engine (see above)"

version=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
mlflow_version=$(sed -n 's/^mlflow==//p' requirements.lock)
code_version="git:$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo -dirty)"
base=${DFP_BASE_IMAGE:-python:3.11.17-slim-bookworm}
debian_base="dfp/base:bookworm-py3.11"
cleanup=()
trap 'rm -rf ${cleanup[@]+"${cleanup[@]}"}' EXIT

# ------------------------------------------------------------------ disk
# A first build of the train image peaks near 11 GB (7.7 GB of layers plus pip's downloads);
# running out midway fails deep inside pip. Check up front, with what a first build needs for
# images not built yet and about 1 GB (the code layers) for the others. Exit 75: not enough disk.
image_name() {
  case "$1" in
    train) echo dfp/kronodroid-train ;; spark) echo dfp/kronodroid-spark ;; mlflow) echo dfp/mlflow-server ;;
    *) echo "dfp/$1" ;;
  esac
}
first_build_mb() {
  case "$1" in train) echo 11000 ;; spark) echo 3000 ;; mlflow) echo 2000 ;; postgres) echo 800 ;; *) echo 400 ;; esac
}
docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)
docker_root=${docker_root:-/var/lib/docker}
need_mb=0
for image in "${images[@]}"; do
  if docker image inspect "$(image_name "$image"):latest" >/dev/null 2>&1; then
    need_mb=$(( need_mb + 1000 ))
  else
    need_mb=$(( need_mb + $(first_build_mb "$image") ))
  fi
done
keep_mb=${DFP_IMAGES_KEEP_FREE_MB:-0}
[[ "$keep_mb" =~ ^[0-9]+$ ]] || fail "DFP_IMAGES_KEEP_FREE_MB must be a whole number of MB, got '$keep_mb'"
kept=""
[ "$keep_mb" = 0 ] || kept=" (${keep_mb} MB of it to keep free, DFP_IMAGES_KEEP_FREE_MB)"
need_mb=$(( need_mb + keep_mb ))
free_mb=$(df -Pm "$docker_root" 2>/dev/null | awk 'NR == 2 {print $4}')
if [ -n "$free_mb" ] && [ "$free_mb" -lt "$need_mb" ]; then
  printf 'error: not enough disk to build %s: about %s MB free needed under %s%s, %s MB free; free some (docker image prune, docker builder prune) or move Docker'"'"'s data-root\n' \
    "${images[*]}" "$need_mb" "$docker_root" "$kept" "$free_mb" >&2
  exit 75
fi

# ------------------------------------------------------------------ base image
if docker image inspect "$base" >/dev/null 2>&1; then
  say "base image $base (present)"
elif docker pull -q "$base" >/dev/null 2>&1; then
  say "base image $base (pulled)"
elif docker image inspect "$debian_base" >/dev/null 2>&1; then
  say "$base cannot be pulled; using $debian_base, built earlier from Debian packages"
  base=$debian_base
else
  say "$base cannot be pulled; building $debian_base from Debian packages (debootstrap)"
  [ "$(id -u)" = 0 ] || fail "$base cannot be pulled and building a base from Debian packages needs root; run as root, or set DFP_BASE_IMAGE to an image you have"
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
      || fail "debootstrap is missing and apt-get install debootstrap failed"
  fi
  # The Debian mirror this machine uses (deb822 sources first, then the one-line format).
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /tmp/dfp-base.XXXXXX)
  cleanup+=("$rootfs")
  started=$(date +%s)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || fail "debootstrap from $mirror failed: $(tail -n 2 "$rootfs.log" | tr '\n' ' ') [log: $rootfs.log]"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$debian_base" >/dev/null \
    || fail "docker import of the Debian base failed"
  say "built $debian_base in $(( $(date +%s) - started ))s"
  base=$debian_base
fi

# ------------------------------------------------------------------ images
secret=()
ca=${DFP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca" ]; then
  secret=(--secret "id=ca_bundle,src=$ca")
elif [ -n "${DFP_CA_BUNDLE:-}" ]; then
  fail "DFP_CA_BUNDLE=$DFP_CA_BUNDLE is not a file"
fi
maven=()
[ -z "${DFP_MAVEN_REPO:-}" ] || maven=(--build-arg "DFP_MAVEN_REPO=$DFP_MAVEN_REPO")

summary=""
for image in "${images[@]}"; do
  case "$image" in
    train) dockerfile=tools/docker/Dockerfile.pytorch_train; tag=$version ;;
    spark) dockerfile=tools/docker/Dockerfile.spark; tag=$version ;;
    mlflow) dockerfile=tools/docker/Dockerfile.mlflow; tag=$mlflow_version ;;
    postgres) dockerfile=tools/docker/Dockerfile.postgres; tag=15 ;;
    seaweedfs|lakefs) dockerfile=tools/docker/Dockerfile.$image ;;
  esac
  name=$(image_name "$image")
  context=.
  case "$image" in
    seaweedfs|lakefs)
      # The image holds the cached Go build; its context is a folder with only what it copies.
      binary=$("$root/tools/scripts/build_go_server.sh" "$image" | tail -n 1) || fail "building the $image binary failed (see above)"
      tag=$(basename "$(dirname "$binary")"); tag=${tag#v}
      context=$(mktemp -d /tmp/dfp-context.XXXXXX); cleanup+=("$context")
      cp "$binary" "$context/"
      [ ! -d "tools/docker/$image" ] || cp -r "tools/docker/$image/." "$context/" ;;
  esac
  say "building $name:$tag ($dockerfile, base $base)"
  previous=$(docker image inspect --format '{{.Id}}' "$name:$tag" 2>/dev/null || true)
  started=$(date +%s)
  "${builder[@]}" --progress=plain -f "$dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "DFP_IMAGE=$name:$tag" --build-arg "DFP_CODE_VERSION=$code_version" \
    ${secret[@]+"${secret[@]}"} ${maven[@]+"${maven[@]}"} -t "$name:$tag" -t "$name:latest" "$context" >&2 \
    || fail "building $name:$tag failed (the build log is above); fix the cause and run \`make images\` again"
  seconds=$(( $(date +%s) - started ))
  # The image this build replaced keeps its layers until removed: each code change would
  # otherwise leave a multi-GB untagged image behind. Kept if anything still uses it.
  current=$(docker image inspect --format '{{.Id}}' "$name:$tag")
  if [ -n "$previous" ] && [ "$previous" != "$current" ] \
     && [ -z "$(docker image inspect --format '{{join .RepoTags ""}}' "$previous" 2>/dev/null)" ]; then
    docker image rm "$previous" >/dev/null 2>&1 && say "removed the image it replaced (${previous:7:12})" || true
  fi
  bytes=$(docker image inspect --format '{{.Size}}' "$name:$tag")
  say "$name:$tag built in ${seconds}s, $(( bytes / 1000000 )) MB"
  summary+="${summary:+, }\"$image\": {\"image\": \"$name:$tag\", \"seconds\": $seconds, \"size_mb\": $(( bytes / 1000000 ))}"
done
printf '{"base_image": "%s", "images": {%s}}\n' "$base" "$summary"
