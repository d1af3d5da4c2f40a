#!/usr/bin/env bash
# Creates the MLflow backend database and its own (non-superuser) role.
# The postgres image runs /docker-entrypoint-initdb.d/* once, on first start with
# an empty data volume; to re-run it, remove the postgres-data volume.
set -Eeo pipefail

: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
: "${MLFLOW_DB_NAME:?set MLFLOW_DB_NAME in .env}"
: "${MLFLOW_DB_USER:?set MLFLOW_DB_USER in .env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}"

# psql variables (:"ident", :'literal') quote the values, so a password is never
# spliced into SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set db="$MLFLOW_DB_NAME" --set role="$MLFLOW_DB_USER" --set password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
