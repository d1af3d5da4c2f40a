#!/usr/bin/env bash
# First start (empty $PGDATA): initdb with POSTGRES_USER as superuser and a scram password,
# create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sh against a server that listens on
# its Unix socket only, then stop it. Every start: exec postgres as the postgres user,
# listening on all interfaces of the container (Compose publishes nothing of it).
set -Eeuo pipefail
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  chown -R postgres:postgres "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi
[ "${1:-}" = postgres ] || exec "$@"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set (the database needs a superuser password)}"
  export POSTGRES_USER=${POSTGRES_USER:-postgres} POSTGRES_DB=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null || fail "initdb failed"
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k /var/run/postgresql" start >/dev/null
  export PGHOST=/var/run/postgresql
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --no-psqlrc -U "$POSTGRES_USER" -d postgres --set db="$POSTGRES_DB" \
      <<< 'CREATE DATABASE :"db";' >/dev/null
  fi
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh) printf 'running %s\n' "$script" >&2; bash "$script" ;;
      *.sql) psql -v ON_ERROR_STOP=1 --no-psqlrc -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$script" ;;
      *) [ -e "$script" ] && printf 'ignoring %s\n' "$script" >&2 ;;
    esac
  done
  unset PGHOST
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  printf 'database initialised\n' >&2
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /var/run/postgresql
