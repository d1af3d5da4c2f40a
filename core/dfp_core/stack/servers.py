"""The stack's servers: which a profile runs, the binaries, each server's command line and
environment (secrets in the environment only, never on the command line or in a config file),
its health check, and what a fresh server needs before the next one can use it."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from dfp_core.errors import StackError
from dfp_core.settings import REPO_ROOT, LakeFSSettings, StackSettings
from dfp_core.stack import lakefs_acl, postgres, seaweedfs
from dfp_core.stack.credentials import MLFLOW_ADMIN, admin_keys
from dfp_core.stack.ports import free_port, port_free
from dfp_core.stack.state import ACL_DIR, ACL_MARKER, LAKEFS_CONFIG, lakefs_acl_of

SERVICES = {"local": ("lakefs", "mlflow"), "s3": ("postgres", "seaweedfs", "lakefs", "mlflow")}
# Every service a home can have, in start order.
ALL_SERVICES = ("postgres", "seaweedfs", "lakefs-acl", "lakefs", "mlflow")


def lakefs_version() -> str:
    gomod = REPO_ROOT / "tools" / "lakefs" / "go.mod"
    match = re.search(r"^require github\.com/treeverse/lakefs (v\S+)", gomod.read_text(), re.M)
    if not match:
        raise StackError(f"cannot read the pinned lakeFS version from {gomod}")
    return match.group(1)


def lakefs_binary(settings: StackSettings) -> Path:
    """The cached lakeFS build (``make setup``), or ``$LAKEFS_BIN``."""
    if settings.lakefs_bin is not None:
        path = settings.lakefs_bin
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise StackError(f"LAKEFS_BIN={path} is not an executable file")
        return path
    path = settings.cache / "lakefs" / lakefs_version() / "lakefs"
    if not path.is_file():
        raise StackError(
            f"the lakeFS server is not built yet (expected {path}); run `make setup` "
            "(it needs Go >= 1.26) or set LAKEFS_BIN to a lakefs binary"
        )
    return path


def lakefs_acl_binary(settings: StackSettings) -> Path:
    """lakeFS's ACL auth server, built beside the lakeFS binary (``make setup``)."""
    path = lakefs_binary(settings).parent / "lakefs-acl"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise StackError(
            f"lakeFS's ACL server is not built (expected {path}, beside the lakeFS binary); "
            "run `make setup`, or turn DFP_LAKEFS_ACL off"
        )
    return path


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code in (200, 204)
    except requests.RequestException:
        return False


LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    name: str
    port_env: str
    port_setting: str  # the StackSettings field holding its port
    startup_timeout: float
    # Clients reach it at the stack's address (DFP_STACK_HOST); the others only ever serve
    # the stack's own servers, so they stay on loopback whatever that address is (the ACL
    # server authenticates no caller).
    public: bool = True

    def port(self, settings: StackSettings) -> int:
        return getattr(settings, self.port_setting)

    def host(self, settings: StackSettings) -> str:
        return settings.host if self.public else LOOPBACK

    def endpoint(self, settings: StackSettings) -> str:
        scheme = "postgresql" if self.name == "postgres" else "http"
        return f"{scheme}://{self.host(settings)}:{self.port(settings)}"


LAKEFS = Service("lakefs", "DFP_LAKEFS_PORT", "lakefs_port", 90)
LAKEFS_ACL = Service("lakefs-acl", "DFP_LAKEFS_ACL_PORT", "lakefs_acl_port", 60, public=False)
MLFLOW = Service("mlflow", "DFP_MLFLOW_PORT", "mlflow_port", 180)
POSTGRES = Service("postgres", "DFP_POSTGRES_PORT", "postgres_port", 60, public=False)
SEAWEEDFS = Service("seaweedfs", "DFP_S3_PORT", "s3_port", 90)
BY_NAME = {svc.name: svc for svc in (POSTGRES, SEAWEEDFS, LAKEFS_ACL, LAKEFS, MLFLOW)}
HEALTH_PATHS = {"lakefs": "/api/v1/healthcheck", "mlflow": "/health", "lakefs-acl": lakefs_acl.HEALTH_PATH}


def services(profile: str, acl: bool = False) -> list[Service]:
    names = [name for name in ALL_SERVICES if name in SERVICES[profile] or (acl and name == LAKEFS_ACL.name)]
    return [BY_NAME[name] for name in names]


def service_healthy(service: Service, endpoint: str, settings: StackSettings, creds: dict[str, str]) -> bool:
    if service is POSTGRES:
        port = urlsplit(endpoint).port or settings.postgres_port
        return postgres.healthy(postgres.bin_dir(settings.postgres_bin_dir), LOOPBACK, port,
                                       creds.get("DFP_POSTGRES_PASSWORD", ""))
    if service is SEAWEEDFS:
        return seaweedfs.healthy(endpoint)
    return _healthy(endpoint + HEALTH_PATHS[service.name])


def _server_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    """Our environment for a server process, without variables it would read as its
    own configuration: it gets only what the stack sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def lakefs_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
    base = settings.home / "lakefs"
    for sub in ("metadata", "data", "cache"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    config = {
        "listen_address": f"{settings.host}:{settings.lakefs_port}",
        "logging": {"format": "text", "level": "INFO"},
        "database": {"type": "local", "local": {"path": str(base / "metadata")}},
        "blockstore": {"type": "local", "local": {"path": str(base / "data")}},
        "committed": {"local_cache": {"dir": str(base / "cache")}},
        "installation": {"user_name": "admin"},
        # No phoning home: usage stats, version checks and audit checks are off.
        "stats": {"enabled": False},
        "email_subscription": {"enabled": False},
        "security": {"check_latest_version": False, "audit_check_url": ""},
    }
    # lakeFS reads LAKEFS_* variables as config keys: give it only ours. Secrets go in
    # the environment, never in the config file or the command line.
    env = _server_env(("LAKEFS_",))
    admin_id, admin_secret = admin_keys(creds)
    env.update(
        {
            "LAKEFS_INSTALLATION_ACCESS_KEY_ID": admin_id,
            "LAKEFS_INSTALLATION_SECRET_ACCESS_KEY": admin_secret,
            "LAKEFS_AUTH_ENCRYPT_SECRET_KEY": creds["DFP_LAKEFS_ENCRYPT_SECRET"],
        }
    )
    acl = lakefs_acl_of(settings, profile)
    if acl:
        # Users, credentials and policies come from the ACL server; lakeFS's "simplified"
        # auth UI is the one that works with it.
        config["auth"] = {"ui_config": {"rbac": "simplified"},
                          "api": {"endpoint": LAKEFS_ACL.endpoint(settings) + lakefs_acl.API}}
    if profile == "s3":
        config["database"] = {"type": "postgres", "postgres": {"max_open_connections": 25}}
        config["blockstore"] = {"type": "s3", "s3": {
            "endpoint": f"http://{settings.host}:{settings.s3_port}", "region": seaweedfs.REGION,
            "force_path_style": True, "discover_bucket_region": False, "max_retries": 3,
        }}
        env.update({
            "LAKEFS_DATABASE_POSTGRES_CONNECTION_STRING": postgres.url(
                LOOPBACK, settings.postgres_port, "lakefs", creds["DFP_POSTGRES_PASSWORD"], scheme="postgres"),
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_ACCESS_KEY_ID": creds["DFP_S3_ACCESS_KEY_ID"],
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_SECRET_ACCESS_KEY": creds["DFP_S3_SECRET_ACCESS_KEY"],
        })
    config_path = settings.home / LAKEFS_CONFIG
    config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    if acl:
        (settings.home / ACL_MARKER).write_text("lakeFS asks the ACL server for users and policies\n")
    return [str(lakefs_binary(settings)), "run", "--config", str(config_path)], env


def lakefs_acl_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
    base = settings.home / ACL_DIR
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    config: dict = {"listen_address": f"{LOOPBACK}:{settings.lakefs_acl_port}",
                    "database": {"type": "local", "local": {"path": str(base / "metadata")}}}
    env = _server_env(("ACLSERVER_",))
    # It encrypts the secret keys it stores with lakeFS's own secret, which lakeFS decrypts.
    env["ACLSERVER_ENCRYPT_SECRET_KEY"] = creds["DFP_LAKEFS_ENCRYPT_SECRET"]
    if profile == "s3":
        config["database"] = {"type": "postgres", "postgres": {"max_open_connections": 5}}
        env["ACLSERVER_DATABASE_POSTGRES_CONNECTION_STRING"] = postgres.url(
            LOOPBACK, settings.postgres_port, "lakefs_acl", creds["DFP_POSTGRES_PASSWORD"], scheme="postgres")
    config_path = base / "config.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    return [str(lakefs_acl_binary(settings)), "run", "--config", str(config_path)], env


def mlflow_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
    base = settings.home / "mlflow"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host,
        "--port", str(settings.mlflow_port),
        "--serve-artifacts",
        "--workers", "1",
    ]
    env = _server_env(("MLFLOW_", "AWS_"))
    # MLflow 3 sends usage telemetry to mlflow-telemetry.io unless told not to; a local
    # stack talks to nothing outside this machine (as lakeFS's stats are off).
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # MLflow 3's server also starts a job runner for its GenAI features (scorers, prompt
    # optimisation, trace roll-ups): eight more Python processes, ~2 GB and a minute of CPU at
    # every start, for jobs this project never submits.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if profile == "s3":
        # Through the environment, so the password is in no command line and no log.
        env.update({
            "MLFLOW_BACKEND_STORE_URI": postgres.url(LOOPBACK, settings.postgres_port, "mlflow",
                                                            creds["DFP_POSTGRES_PASSWORD"], scheme="postgresql+psycopg2"),
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{seaweedfs.BUCKETS[1]}/artifacts",
            "MLFLOW_S3_ENDPOINT_URL": f"http://{settings.host}:{settings.s3_port}",
            "AWS_ACCESS_KEY_ID": creds["DFP_S3_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": creds["DFP_S3_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": seaweedfs.REGION,
        })
    else:
        (base / "artifacts").mkdir(parents=True, exist_ok=True)
        cmd += ["--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                "--artifacts-destination", str(base / "artifacts")]
    if settings.mlflow_auth_for(profile):
        cmd += ["--app-name", "basic-auth"]
        env.update({
            "MLFLOW_AUTH_CONFIG_PATH": str(_mlflow_auth_config(base)),
            # The admin's password and the CSRF secret through the environment, not the file.
            "MLFLOW_AUTH_ADMIN_USERNAME": creds["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": creds["MLFLOW_TRACKING_PASSWORD"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["DFP_MLFLOW_FLASK_SECRET"],
        })
    return cmd, env


def _mlflow_auth_config(base: Path) -> Path:
    """MLflow's basic-auth configuration: users and permissions in a SQLite file of the stack;
    a user without a permission on a resource gets none; credential checks are cached a
    minute (one worker, so no worker can hold a stale entry)."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{base / 'basic_auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


def postgres_command(settings: StackSettings, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    bindir = postgres.bin_dir(settings.postgres_bin_dir)
    data = postgres.init_cluster(settings.home, bindir, creds["DFP_POSTGRES_PASSWORD"])
    env = _server_env(("PG",))
    return postgres.server_command(bindir, data, LOOPBACK, settings.postgres_port), env


def seaweedfs_command(settings: StackSettings, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    weed = seaweedfs.binary(REPO_ROOT, settings.cache, settings.seaweedfs_bin)
    base = settings.home / "seaweedfs"
    base.mkdir(parents=True, exist_ok=True)
    identities = seaweedfs.write_identities(base, creds["DFP_S3_ACCESS_KEY_ID"], creds["DFP_S3_SECRET_ACCESS_KEY"])
    ports = _internal_ports(base, settings.host)
    cmd = seaweedfs.server_command(weed, base, settings.host, settings.s3_port, ports, identities)
    return cmd, _server_env(("AWS_", "WEED_"))


def _internal_ports(base: Path, host: str) -> dict[str, int]:
    """SeaweedFS's internal ports: picked free once, then kept (its master remembers its
    own address), and picked again only if another program took one meanwhile."""
    path = base / "ports.json"
    try:
        ports = json.loads(path.read_text())
        if set(ports) == set(seaweedfs.INTERNAL_PORTS) and all(port_free(host, p) for p in ports.values()):
            return ports
    except (OSError, ValueError):
        pass
    ports = {}
    while len(ports) < len(seaweedfs.INTERNAL_PORTS):
        port = free_port(host)
        # gRPC defaults to port+10000 elsewhere in SeaweedFS; stay clear of collisions.
        if port not in ports.values() and port < 55000:
            ports[seaweedfs.INTERNAL_PORTS[len(ports)]] = port
    path.write_text(json.dumps(ports))
    return ports


def _setup_lakefs(endpoint: str, creds: dict[str, str]) -> None:
    """lakeFS sets its admin up by itself only on a local KV; on PostgreSQL the stack does,
    once, through the setup API, with the same generated key pair."""
    try:
        state = requests.get(f"{endpoint}/api/v1/setup_lakefs", timeout=10).json().get("state")
        if state == "initialized":
            return
        answer = requests.post(f"{endpoint}/api/v1/setup_lakefs", timeout=30, json={
            "username": "admin",
            "key": dict(zip(("access_key_id", "secret_access_key"), admin_keys(creds))),
        })
    except (requests.RequestException, ValueError) as exc:
        raise StackError(f"cannot set lakeFS's admin user up at {endpoint}: {exc.__class__.__name__}") from None
    if answer.status_code not in (200, 201):
        raise StackError(f"lakeFS refused the admin set-up at {endpoint}: HTTP {answer.status_code} {answer.text[:200]}")


def after_start(service: Service, settings: StackSettings, creds: dict[str, str], profile: str) -> None:
    """What a fresh server needs before the next one can use it."""
    if service is LAKEFS and profile == "s3":
        _setup_lakefs(service.endpoint(settings), creds)
    elif service is POSTGRES:
        postgres.ensure_databases(postgres.bin_dir(settings.postgres_bin_dir), LOOPBACK,
                                         settings.postgres_port, creds["DFP_POSTGRES_PASSWORD"])
    elif service is SEAWEEDFS:
        seaweedfs.ensure_buckets(service.endpoint(settings), creds["DFP_S3_ACCESS_KEY_ID"],
                                 creds["DFP_S3_SECRET_ACCESS_KEY"])


def command(service: Service, settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment."""
    if service is LAKEFS:
        return lakefs_command(settings, creds, profile)
    if service is LAKEFS_ACL:
        return lakefs_acl_command(settings, creds, profile)
    if service is MLFLOW:
        return mlflow_command(settings, creds, profile)
    if service is POSTGRES:
        return postgres_command(settings, creds)
    return seaweedfs_command(settings, creds)


def ensure_pipeline_user(settings: StackSettings, creds: dict[str, str], repository: str) -> None:
    """With the ACL server: the pipeline's user, whose policy covers ``repository`` only."""
    lakefs_settings = LakeFSSettings(storage_namespace=creds.get("LAKEFS_STORAGE_NAMESPACE") or None)
    lakefs_acl.ensure_pipeline_user(
        LAKEFS_ACL.endpoint(settings), repository, lakefs_settings.namespace_for(repository),
        creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"],
    )
