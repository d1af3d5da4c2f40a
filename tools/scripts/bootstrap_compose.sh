#!/usr/bin/env bash
# For Docker users: start docker-compose.yml (Postgres, MinIO, lakeFS, MLflow),
# wait until it is healthy, create the lakeFS repository, and print the
# environment the dfp CLI needs. Idempotent: re-running keeps all data.
#
#   tools/scripts/bootstrap_compose.sh
#
# Settings and credentials come from .env (template: .env.example).
# DFP_COMPOSE_TIMEOUT: seconds to wait for the services to be healthy (default 300).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

timeout_s=${DFP_COMPOSE_TIMEOUT:-300}
[[ $timeout_s =~ ^[0-9]+$ ]] || fail "DFP_COMPOSE_TIMEOUT must be a number of seconds, got '$timeout_s'"

step "checking tools"
command -v docker >/dev/null || fail "docker is not installed (https://docs.docker.com/engine/install/)"
docker compose version >/dev/null 2>&1 \
  || fail "the Docker Compose v2 plugin is required ('docker compose ...'); install docker-compose-plugin"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker daemon: is it running, and may this user use it?"
command -v curl >/dev/null || fail "curl is required"

step "checking .env"
if [[ ! -f .env ]]; then
  cp .env.example .env
  chmod 600 .env
  fail "created .env from .env.example: replace every change-me in $root/.env, then run this again"
fi
placeholders=$(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=["'\'']\{0,1\}change-me["'\'']\{0,1\}[[:space:]]*$/\1/p' .env | paste -sd ' ' -)
[[ -z $placeholders ]] || fail "replace the change-me values in $root/.env first: $placeholders"

# Last KEY=VALUE in .env, without surrounding quotes (the format Compose reads).
env_value() {
  local value
  value=$(sed -n "s/^$1=//p" .env | tail -n 1)
  value=${value%$'\r'}
  if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
  [[ -n $value ]] || fail "$1 is not set in $root/.env (see .env.example)"
  printf '%s' "$value"
}

lakefs_port=$(env_value LAKEFS_PORT)
mlflow_port=$(env_value MLFLOW_PORT)
key_id=$(env_value LAKEFS_ACCESS_KEY_ID)
secret=$(env_value LAKEFS_SECRET_ACCESS_KEY)
repo=$(env_value LAKEFS_REPOSITORY)
bucket=$(env_value LAKEFS_BUCKET)
[[ $repo =~ ^[a-z0-9][a-z0-9-]{2,62}$ ]] \
  || fail "LAKEFS_REPOSITORY='$repo' is not a valid lakeFS repository name (3-63 of a-z, 0-9, '-')"
[[ $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] \
  || fail "LAKEFS_BUCKET='$bucket' is not a valid S3 bucket name"

# Compose prefers the shell's variables over .env; make .env the only source.
while IFS='=' read -r key _; do
  if [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then unset "$key"; fi
done < .env

step "starting the stack (first run builds the MLflow image and pulls the others)"
docker compose up -d --build

wait_healthy() {
  local service=$1 cid status="not started" deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    cid=$(docker compose ps -q "$service" 2>/dev/null || true)
    if [[ -n $cid ]]; then
      status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$cid")
      case $status in
        healthy) return 0 ;;
        unhealthy | exited | dead) break ;;
      esac
    fi
    sleep 3
  done
  docker compose logs --tail 40 "$service" >&2 || true
  fail "$service is $status after waiting up to ${timeout_s}s (its last log lines are above)"
}

for service in postgres minio lakefs mlflow; do
  step "waiting for $service"
  wait_healthy "$service"
done

endpoint="http://127.0.0.1:$lakefs_port"
namespace="s3://$bucket/$repo"
step "lakeFS repository $repo at $namespace"
response=$(mktemp)
trap 'rm -f "$response"' EXIT
# Credentials go to curl on stdin (a config file), never on its command line.
curl_quote() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }
code=$(printf 'user = %s\n' "$(curl_quote "$key_id:$secret")" \
  | curl -sS -K - -o "$response" -w '%{http_code}' \
      -H 'Content-Type: application/json' -X POST \
      --data "{\"name\":\"$repo\",\"storage_namespace\":\"$namespace\",\"default_branch\":\"main\"}" \
      "$endpoint/api/v1/repositories") \
  || fail "cannot reach lakeFS at $endpoint"
case $code in
  201) step "created repository $repo" ;;
  409) step "repository $repo already exists" ;;
  401 | 403)
    fail "lakeFS rejected the credentials (HTTP $code). LAKEFS_ACCESS_KEY_ID/LAKEFS_SECRET_ACCESS_KEY in .env" \
      "must be the ones lakeFS was first started with (later changes are ignored; 'docker compose down -v'" \
      "deletes all data and starts over)" ;;
  *) fail "creating repository $repo failed with HTTP $code: $(head -c 500 "$response")" ;;
esac

step "ready: lakeFS UI $endpoint, MLflow UI http://127.0.0.1:$mlflow_port"
cat <<EOF
# Environment for the dfp CLI (paste into your shell). The secret is not printed:
# set LAKEFS_SECRET_ACCESS_KEY to the value in $root/.env.
export LAKEFS_ENDPOINT=$endpoint
export LAKEFS_ACCESS_KEY_ID=$key_id
export LAKEFS_SECRET_ACCESS_KEY=<from .env>
export LAKEFS_REPOSITORY=$repo
export LAKEFS_BRANCH=main
export LAKEFS_STORAGE_NAMESPACE='s3://$bucket/{repo}'
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
EOF
