#!/usr/bin/env bash
# Re-resolves tools/spark-jars/pom.xml with Maven and rewrites jars.lock
# (paths under Maven Central + sha256). Only needed when changing versions.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$root/tools/spark-jars" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$tmp" -Dmdep.useRepositoryLayout=true)
{
  echo "# Spark jars beyond pyspark, resolved from tools/spark-jars/pom.xml (make lock-jars)."
  echo "# <path under Maven Central> <sha256>"
  (cd "$tmp" && find . -name '*.jar' | sed 's|^\./||' | sort | while read -r p; do echo "$p $(sha256sum "$p" | cut -d' ' -f1)"; done)
} > "$root/tools/spark-jars/jars.lock"
echo "wrote tools/spark-jars/jars.lock ($(grep -vc '^#' "$root/tools/spark-jars/jars.lock") jars)"
