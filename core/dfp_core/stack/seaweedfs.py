"""SeaweedFS for the stack's s3 profile: one ``weed server`` process (master, volume
server, filer and S3 gateway) on loopback, the S3-compatible object store under
lakeFS's blockstore and MLflow's artifact store.

Only the S3 port is a setting; the internal ports (master, volume, filer and their
gRPC ports) are picked free at start and kept in the stack's state. Every extra
listener SeaweedFS would open by default (Iceberg REST, Lance, IAM writes,
telemetry) is off.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import requests

from dfp_core.errors import StackError

BUCKETS = ("dfp-lakefs", "dfp-mlflow")  # lakeFS's storage namespaces, MLflow's artifacts
INTERNAL_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")
REGION = "us-east-1"
MIN_FREE_SPACE = "256MiB"
PROBE_KEY = ".dfp-write-probe"  # written and deleted at start: proof that the store takes writes


def version(repo_root: Path) -> str:
    gomod = repo_root / "tools" / "seaweedfs" / "go.mod"
    match = re.search(r"^require github\.com/seaweedfs/seaweedfs (v\S+)", gomod.read_text(), re.M)
    if not match:
        raise StackError(f"cannot read the pinned SeaweedFS version from {gomod}")
    return match.group(1)


def binary(repo_root: Path, cache: Path, override: Path | None) -> Path:
    """The cached build (``make setup``), or ``$SEAWEEDFS_BIN``."""
    if override is not None:
        if not (override.is_file() and os.access(override, os.X_OK)):
            raise StackError(f"SEAWEEDFS_BIN={override} is not an executable file")
        return override
    path = cache / "seaweedfs" / version(repo_root) / "weed"
    if not path.is_file():
        raise StackError(
            f"the SeaweedFS server is not built yet (expected {path}); the s3 profile needs it: run `make setup-s3` "
            "(it needs Go >= 1.26) or set SEAWEEDFS_BIN to a weed binary"
        )
    return path


def write_identities(base: Path, access_key: str, secret_key: str) -> Path:
    """The S3 gateway's one identity (the stack's generated key pair), in a 0600 file."""
    path = base / "s3.json"
    body = {"identities": [{"name": "dfp", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle)
    os.chmod(path, 0o600)
    return path


def server_command(weed: Path, base: Path, host: str, s3_port: int, ports: dict[str, int], identities: Path) -> list[str]:
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    return [
        str(weed), "server",
        f"-dir={data}", f"-ip={host}", f"-ip.bind={host}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=512",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}", "-volume.max=100",
        # A fixed reserve, not SeaweedFS's 1% of the disk (2.5 GB of a 250 GB one, where a
        # build's images may leave less): below it every volume turns read-only and each
        # write fails. A transform checks the free disk under DFP_HOME itself.
        f"-volume.minFreeSpace={MIN_FREE_SPACE}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={base / 'filer.sock'}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={identities}",
        f"-s3.localSocket={base / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
    ]


def healthy(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def client(endpoint: str, access_key: str, secret_key: str, attempts: int = 3, read_timeout: float = 30):
    # Deferred (boto3): only the s3 profile's bucket needs it.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=REGION, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": attempts},
                                          connect_timeout=5, read_timeout=read_timeout),
    )


def ensure_buckets(endpoint: str, access_key: str, secret_key: str, wait_s: float = 60.0) -> None:
    """The stack's buckets, then proof that SeaweedFS stores objects: its S3 gateway answers
    (and makes buckets, which live in the filer) before its volume server has joined the
    master, and a volume server short of disk keeps its volumes read-only. Either would
    only show later, as lakeFS's "failed to access storage" after its own retries."""
    # Deferred (botocore, the stack extra's): a step's image imports this package without it.
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(endpoint, access_key, secret_key)
    try:
        have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in BUCKETS:
            if bucket not in have:
                s3.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise StackError(f"cannot create the stack's buckets in SeaweedFS at {endpoint}: {exc}") from None
    # One attempt a probe, each bounded: SeaweedFS with nowhere to write retries inside for
    # about 30 s before it answers 500, and the deadline is what the caller waits.
    probe = client(endpoint, access_key, secret_key, attempts=1, read_timeout=min(15.0, wait_s))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            for bucket in BUCKETS:
                probe.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"dfp")
                probe.delete_object(Bucket=bucket, Key=PROBE_KEY)
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() >= deadline:
                raise StackError(
                    f"SeaweedFS at {endpoint} answers but cannot store an object after {wait_s:.0f}s ({exc}); "
                    f"a volume server that never joined its master or a disk with under {MIN_FREE_SPACE} free are the usual causes"
                ) from None
            time.sleep(0.5)
