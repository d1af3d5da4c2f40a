#!/usr/bin/env bash
# `server`: one `weed server` (master, volume, filer, S3 gateway on :9000, MinIO's port, so
# the services that use MinIO need no change). Its one S3 identity comes from S3_ACCESS_KEY
# and S3_SECRET_KEY, written to a 0600 file in a private folder, never onto a command line.
# Anything else runs as given (e.g. `weed shell ...`).
set -Eeuo pipefail
if [ "${1:-}" != server ]; then exec "$@"; fi
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}" "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
conf=$(mktemp -d)
python3 - "$conf/s3.json" <<'PY'
import json, os, sys
body = {"identities": [{"name": "admin", "credentials": [{"accessKey": os.environ["S3_ACCESS_KEY"],
        "secretKey": os.environ["S3_SECRET_KEY"]}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as handle:
    json.dump(body, handle)
PY
unset S3_ACCESS_KEY S3_SECRET_KEY
exec weed server -dir=/data -ip="${WEED_IP:-$(hostname)}" -ip.bind=0.0.0.0 \
  -master.telemetry=false -master.volumeSizeLimitMB=512 -volume.max=100 \
  -filer -s3 -s3.port=9000 -s3.config="$conf/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.autoCreateBucket=false
