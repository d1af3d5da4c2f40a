#!/usr/bin/env bash
# For Docker users: start docker-compose.yml (Postgres, MinIO, lakeFS, MLflow), wait until it is
# healthy, set lakeFS up (its admin, from .env), create the repository, and print the environment
# the dfp CLI needs. Idempotent: re-running keeps all data.
#
#   tools/scripts/bootstrap_compose.sh [--built-images] [--env-file FILE] [--project-name NAME]
#
#   --built-images   where the images cannot be pulled: build them here (build_images.sh postgres
#                    seaweedfs lakefs mlflow; SeaweedFS stands in for MinIO) and add
#                    docker-compose.built-images.yml; a missing `docker compose` is built too.
#   --env-file FILE  settings and credentials (default: .env; template: .env.example).
#   --project-name   Compose project name (default: Compose's own, the folder name), so that
#                    two stacks can run side by side.
# DFP_COMPOSE_TIMEOUT: seconds to wait for the services to be healthy (default 300).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

built_images=false
env_file=$root/.env
project=()
while (($#)); do
  case $1 in
    --built-images) built_images=true ;;
    --env-file) (($# > 1)) || fail "--env-file needs a file"; env_file=$2; shift ;;
    --project-name) (($# > 1)) || fail "--project-name needs a name"; project=(-p "$2"); shift ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

timeout_s=${DFP_COMPOSE_TIMEOUT:-300}
[[ $timeout_s =~ ^[0-9]+$ ]] || fail "DFP_COMPOSE_TIMEOUT must be a number of seconds, got '$timeout_s'"

step "checking $env_file"
if [[ ! -f $env_file ]]; then
  [[ $env_file == "$root/.env" ]] || fail "--env-file $env_file: no such file"
  (cd "$root" && umask 077 && cp .env.example .env)
  fail "created .env from .env.example: replace every change-me in $root/.env, then run this again"
fi
env_file=$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")
cd "$root"
placeholders=$(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=["'\'']\{0,1\}change-me["'\'']\{0,1\}[[:space:]]*$/\1/p' "$env_file" | paste -sd ' ' -)
[[ -z $placeholders ]] || fail "replace the change-me values in $env_file first: $placeholders"

# Last KEY=VALUE in the env file, without surrounding quotes (the format Compose reads).
env_value() {
  local value
  value=$(sed -n "s/^$1=//p" "$env_file" | tail -n 1)
  value=${value%$'\r'}
  if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
  [[ -n $value ]] || fail "$1 is not set in $env_file (see .env.example)"
  printf '%s' "$value"
}

lakefs_port=$(env_value LAKEFS_PORT)
mlflow_port=$(env_value MLFLOW_PORT)
admin=$(env_value LAKEFS_ADMIN_USER)
key_id=$(env_value LAKEFS_ACCESS_KEY_ID)
secret=$(env_value LAKEFS_SECRET_ACCESS_KEY)
repo=$(env_value LAKEFS_REPOSITORY)
bucket=$(env_value LAKEFS_BUCKET)
[[ $repo =~ ^[a-z0-9][a-z0-9-]{2,62}$ ]] \
  || fail "LAKEFS_REPOSITORY='$repo' is not a valid lakeFS repository name (3-63 of a-z, 0-9, '-')"
[[ $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] \
  || fail "LAKEFS_BUCKET='$bucket' is not a valid S3 bucket name"
# lakeFS's setup API takes a longer key id, but its S3 gateway (what Spark uses) then rejects
# every request as unsigned: it parses at most 20 characters.
((${#key_id} >= 3 && ${#key_id} <= 20)) \
  || fail "LAKEFS_ACCESS_KEY_ID must be 3 to 20 characters (lakeFS's S3 gateway reads no more), e.g. AKIA + 16 upper-case letters/digits; it has ${#key_id}"

step "checking tools"
command -v docker >/dev/null || fail "docker is not installed (https://docs.docker.com/engine/install/)"
if $built_images; then
  "$root/tools/scripts/docker_engine.sh" --compose >&2 || fail "no usable Docker engine with Compose (see above)"
fi
docker compose version >/dev/null 2>&1 \
  || fail "the Docker Compose v2 plugin is required ('docker compose ...'); install docker-compose-plugin, or run tools/scripts/docker_engine.sh --compose, which builds it"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker daemon: is it running, and may this user use it?"
command -v curl >/dev/null || fail "curl is required"

compose=(docker compose --env-file "$env_file" ${project[@]+"${project[@]}"} -f docker-compose.yml)
if $built_images; then
  step "building the stack's images here (tools/scripts/build_images.sh postgres seaweedfs lakefs mlflow)"
  # 75 (not enough disk, said above) passes through, so callers can tell it from a failed build.
  status=0
  "$root/tools/scripts/build_images.sh" postgres seaweedfs lakefs mlflow >&2 || status=$?
  [ "$status" != 75 ] || exit 75
  [ "$status" = 0 ] || fail "building the stack's images failed (see above)"
  compose+=(-f docker-compose.built-images.yml)
fi

# Compose prefers the shell's variables over the env file; make the file the only source.
while IFS='=' read -r key _; do
  if [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then unset "$key"; fi
done < "$env_file"

step "starting the stack"
if $built_images; then
  "${compose[@]}" up -d --no-build --pull never >&2 || fail "docker compose up failed (see above)"
else
  "${compose[@]}" up -d --build >&2 || fail "docker compose up failed (see above); where images cannot be pulled, use --built-images"
fi

wait_healthy() {
  local service=$1 cid status="not started" deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    cid=$("${compose[@]}" ps -q "$service" 2>/dev/null || true)
    if [[ -n $cid ]]; then
      status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$cid")
      case $status in
        healthy) return 0 ;;
        unhealthy | exited | dead) break ;;
      esac
    fi
    sleep 2
  done
  "${compose[@]}" logs --tail 40 "$service" >&2 || true
  fail "$service is $status after waiting up to ${timeout_s}s (its last log lines are above)"
}

for service in postgres minio lakefs mlflow; do
  step "waiting for $service"
  wait_healthy "$service"
done

endpoint="http://127.0.0.1:$lakefs_port"
response=$(mktemp)
trap 'rm -f "$response"' EXIT
json_quote() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# lakeFS creates its admin by itself only on its local KV store; on PostgreSQL it waits for
# the setup call. The key pair is the one in the env file.
state=$(curl -sS "$endpoint/api/v1/setup_lakefs") || fail "cannot reach lakeFS at $endpoint"
if [[ $state == *'"state":"initialized"'* || $state == *'"state": "initialized"'* ]]; then
  step "lakeFS is set up"
else
  step "setting lakeFS up with admin $admin"
  # The secret goes to curl on stdin, never on its command line.
  code=$(printf '{"username":%s,"key":{"access_key_id":%s,"secret_access_key":%s}}' \
      "$(json_quote "$admin")" "$(json_quote "$key_id")" "$(json_quote "$secret")" \
    | curl -sS -o "$response" -w '%{http_code}' -H 'Content-Type: application/json' -X POST \
        --data-binary @- "$endpoint/api/v1/setup_lakefs") || fail "cannot reach lakeFS at $endpoint"
  [[ $code == 200 ]] || fail "setting lakeFS up failed with HTTP $code: $(head -c 300 "$response")"
fi

namespace="s3://$bucket/$repo"
step "lakeFS repository $repo at $namespace"
code=$(printf 'user = %s\n' "$(json_quote "$key_id:$secret")" \
  | curl -sS -K - -o "$response" -w '%{http_code}' \
      -H 'Content-Type: application/json' -X POST \
      --data "{\"name\":\"$repo\",\"storage_namespace\":\"$namespace\",\"default_branch\":\"main\"}" \
      "$endpoint/api/v1/repositories") \
  || fail "cannot reach lakeFS at $endpoint"
case $code in
  201) step "created repository $repo" ;;
  409) step "repository $repo already exists" ;;
  401 | 403)
    fail "lakeFS rejected the credentials (HTTP $code). LAKEFS_ACCESS_KEY_ID/LAKEFS_SECRET_ACCESS_KEY in $env_file" \
      "must be the ones lakeFS was first set up with (later changes are ignored; 'docker compose down -v'" \
      "deletes all data and starts over)" ;;
  *) fail "creating repository $repo failed with HTTP $code: $(head -c 500 "$response")" ;;
esac

step "ready: lakeFS UI $endpoint, MLflow UI http://127.0.0.1:$mlflow_port"
cat <<EOF
# Environment for the dfp CLI (paste into your shell). The secret is not printed:
# set LAKEFS_SECRET_ACCESS_KEY to the value in $env_file.
export LAKEFS_ENDPOINT=$endpoint
export LAKEFS_ACCESS_KEY_ID=$key_id
export LAKEFS_SECRET_ACCESS_KEY=<from $(basename "$env_file")>
export LAKEFS_REPOSITORY=$repo
export LAKEFS_BRANCH=main
export LAKEFS_STORAGE_NAMESPACE='s3://$bucket/{repo}'
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
# MLflow 3 hands clients pre-signed object-store URLs for downloads; the object store is not
# published outside the Compose network, so download through MLflow's artifact proxy instead.
export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false
EOF
