#!/usr/bin/env bash
# The s3 profile's servers, which only `dfp stack up --profile s3` starts: SeaweedFS built from
# the Go module proxy (cached by version, about 10 minutes cold on 2 cores) and PostgreSQL from
# Debian's packages (apt, as root). Idempotent: what is there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
t0=$(date +%s)
printf '\n==> %s\n' "the s3 profile's servers (SeaweedFS, PostgreSQL)" >&2
tools/scripts/build_go_server.sh seaweedfs >/dev/null \
  || { echo "error: SeaweedFS could not be built (see above); \`dfp stack up --profile s3\` cannot start" >&2; exit 1; }
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 && [ -z "${DFP_POSTGRES_BIN_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian packages (apt-get install postgresql)..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
      || { echo "error: apt-get install postgresql failed; the s3 profile cannot start" >&2; exit 1; }
  else
    echo "error: PostgreSQL is not installed: as root, \`make setup-s3\` installs it with apt; or install it yourself, or set DFP_POSTGRES_BIN_DIR" >&2
    exit 1
  fi
fi
printf '%s ready in %ss\n' "the s3 profile's servers" "$(( $(date +%s) - t0 ))" >&2
