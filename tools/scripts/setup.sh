#!/usr/bin/env bash
# One-time, idempotent set-up: .venv with pinned dependencies, the lakeFS server
# binary (built from the Go module proxy, cached by version) and the Spark jars
# (Maven Central, checksummed, cached): what the local profile and `make quickstart`
# use. Re-running skips what is already done.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
step() { printf '\n==> [%s] %s\n' "$1" "$2" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

step 1/5 "checking tools"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || fail "Python 3.11 or 3.12 is required (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' \
  || fail "Python 3.11 or 3.12 is required, found $("$PYTHON" --version 2>&1); set PYTHON=/path/to/python3.11"
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then java_bin="$JAVA_HOME/bin/java"; else java_bin=$(command -v java || true); fi
[ -n "$java_bin" ] || fail "Java 17 or newer is required by Spark; install a JDK (e.g. apt install openjdk-17-jre-headless) or set JAVA_HOME"
java_major=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}')
[ "${java_major:-0}" -ge 17 ] || fail "Java 17 or newer is required by Spark, found Java ${java_major:-unknown} at $java_bin"
echo "python: $("$PYTHON" --version 2>&1), java: $java_major" >&2

step 2/5 "Python environment (.venv, pinned by requirements.lock)"
stamp=.venv/.dfp-installed
# The stamp also names how the venv is built, so that a change to that reinstalls it once.
want=$( (cat pyproject.toml requirements.lock; echo "compile-bytecode") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "up to date" >&2
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet -c requirements.lock --upgrade pip setuptools wheel uv
  # uv keeps one cache of unpacked wheels and hard-links the venv's files to it: torch's CUDA
  # wheels (several GB) are stored once, not once in pip's cache and again in the venv, and an
  # environment built from a model's requirements (`mlflow models serve --env-manager uv`)
  # links the same files. Where the cache is on another filesystem, uv copies instead.
  # Quiet: uv would list every download and all ~210 packages; errors still show.
  # --compile-bytecode: unlike pip, uv leaves compiling to each module's first import, which
  # writes nothing where PYTHONDONTWRITEBYTECODE is set or the venv is read-only; then every
  # process compiles what it imports again (MLflow, torch, Feast: ~4.7 s of a 200,000-row
  # `dfp score`). Compiled once here (~30 s on 2 cores), they load from .pyc files.
  echo "installing the pinned packages: about 4.4 GB to download on a fresh machine, cached by uv after" >&2
  installing=$(date +%s)
  .venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python -c requirements.lock -e ".[all,dev]"
  echo "installed in $(( $(date +%s) - installing ))s" >&2
  echo "$want" > "$stamp"
fi

step 3/5 "lakeFS server binary"
tools/scripts/build_lakefs.sh >/dev/null

step 4/5 "Spark jars (Iceberg runtime, S3A)"
.venv/bin/python core/dfp_core/spark_jars.py

step 5/5 "Spark class archive (the local driver JVM's classes, ready at start)"
# A short warm-up job, once per JDK and jar set (~55 s with its check): every later local Spark session starts
# seconds sooner. Its Spark output goes to a log; a failure only warns (Spark runs without it).
archive_log=$(mktemp -t dfp-class-archive.XXXXXX.log)
.venv/bin/python -m dfp_core.spark_class_archive 2>"$archive_log" \
  || echo "warning: building the Spark class archive failed" >>"$archive_log"
if grep -q '^warning:' "$archive_log"; then
  grep '^warning:' "$archive_log" >&2; echo "its log: $archive_log" >&2
else
  grep '^Spark class archive' "$archive_log" >&2 || true; rm -f "$archive_log"
fi

# The s3 profile's servers (SeaweedFS, PostgreSQL) are not needed here: `make setup-s3` builds
# and installs them (tools/scripts/setup_s3.sh), and `make test` runs it.
printf '\nsetup done in %ss\n' "$(( $(date +%s) - t0 ))" >&2
