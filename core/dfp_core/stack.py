"""The local stack: a real lakeFS server and a real MLflow tracking server (with its
registry; artifacts served by the server), started as background processes that
outlive the command. Two profiles:

- ``local`` (the default): lakeFS on its local KV and local blockstore, MLflow on
  SQLite and a local artifact folder;
- ``s3``: PostgreSQL holds the lakeFS KV and the MLflow store, and SeaweedFS (an
  S3-compatible object store) holds lakeFS's objects (``s3://`` storage
  namespaces) and MLflow's artifacts, as a deployment runs them.

With ``DFP_LAKEFS_ACL=1`` (the s3 profile's default; fixed when a home's lakeFS is first set
up) lakeFS asks its ACL auth server (``lakefs-acl``) for users and policies: the stack's admin
key pair moves to ``DFP_LAKEFS_ADMIN_*`` and ``LAKEFS_ACCESS_KEY_ID``/``LAKEFS_SECRET_ACCESS_KEY``
are those of the pipeline's user, whose policy covers the configured repository only.

``$DFP_HOME`` holds everything: ``state.json`` (pids and endpoints), ``profile``,
the generated credentials in ``stack.env`` (mode 0600), data and logs. ``down``
stops only processes whose pid *and* start time match what ``up`` recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import psutil
import requests

from dfp_core import lakefs_acl, postgres_server, seaweedfs_server
from dfp_core.ml import signing
from dfp_core.errors import StackError
from dfp_core.progress import note
from dfp_core.settings import REPO_ROOT, STACK_ENV_FILE, STACK_PROFILES, LakeFSSettings, StackSettings, read_env_file

STATE_FILE = "state.json"
PROFILE_FILE = "profile"
SERVICES = {"local": ("lakefs", "mlflow"), "s3": ("postgres", "seaweedfs", "lakefs", "mlflow")}
# Every service a home can have, in start order.
ALL_SERVICES = ("postgres", "seaweedfs", "lakefs-acl", "lakefs", "mlflow")
ACL_DIR = "lakefs-acl"  # the ACL server's own data
# Written beside lakeFS's config when lakeFS is set up to use the ACL server.
ACL_MARKER = Path("lakefs") / "auth-acl"
LAKEFS_CONFIG = Path("lakefs") / "config.yaml"
# Where the home has the ACL server, the admin's pair is kept under these names.
ADMIN_KEY_ENV = ("DFP_LAKEFS_ADMIN_ACCESS_KEY_ID", "DFP_LAKEFS_ADMIN_SECRET_ACCESS_KEY")
# MLflow's basic-auth app: the admin user it creates on its first start is the stack's user.
MLFLOW_ADMIN = "admin"
Log = Callable[[str], None]


# --------------------------------------------------------------------------- binaries


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


# --------------------------------------------------------------------------- state


@dataclass
class ProcessRecord:
    """A service ``up`` started: the leader of its own process group (session), whose
    id is the leader's pid. Workers it forks (MLflow's gunicorn/uvicorn) share the group
    and outlive a killed leader, so the group, not the pid, is what is supervised."""

    name: str
    pid: int
    create_time: float
    endpoint: str
    log: str

    def process(self) -> psutil.Process | None:
        """The live leader this record describes, or None (gone or pid reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def group(self) -> list[psutil.Process]:
        """Every live process of the service's group, leader included. A group id is not
        reused while any member lives, so members started after the leader are ours."""
        members = []
        for proc in psutil.process_iter(["create_time", "status"]):
            try:
                if (os.getpgid(proc.pid) == self.pid and proc.info["create_time"] >= self.create_time - 1.0
                        and proc.info["status"] != psutil.STATUS_ZOMBIE):
                    members.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return members


def private_home(home: Path) -> None:
    """DFP_HOME, created or tightened to 0700: it holds the keys, the lakeFS data and every run."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if home.stat().st_mode & 0o077:
        os.chmod(home, 0o700)


class StackState:
    def __init__(self, home: Path):
        self.home = home
        self.path = home / STATE_FILE

    def load(self) -> dict[str, ProcessRecord]:
        if self.home.exists() and not self.home.is_dir():
            raise StackError(f"DFP_HOME={self.home} is a file, not a directory; move it away or set DFP_HOME elsewhere")
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: ProcessRecord(**rec) for name, rec in raw.get("processes", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise StackError(
                f"stack state file {self.path} is corrupt ({exc.__class__.__name__}); "
                "delete that one file (data is kept) or run `dfp stack reset --yes` to start over"
            ) from None

    def save(self, records: dict[str, ProcessRecord]) -> None:
        private_home(self.home)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": {k: vars(v) for k, v in records.items()}}, indent=2))
        tmp.replace(self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise concurrent ``up``/``down`` calls on one DFP_HOME."""
        private_home(self.home)
        with open(self.home / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def profile_of(settings: StackSettings) -> str:
    """The profile DFP_HOME was set up with; asking for another one is an error."""
    path = settings.home / PROFILE_FILE
    recorded = path.read_text().strip() if path.is_file() else None
    if recorded is None and (settings.home / "lakefs" / "metadata").is_dir():
        recorded = "local"  # a home set up before profiles were recorded
    if recorded is not None and recorded not in STACK_PROFILES:
        raise StackError(f"{path} names an unknown profile {recorded!r}; expected one of {', '.join(STACK_PROFILES)}")
    if settings.profile and recorded and settings.profile != recorded:
        raise StackError(
            f"DFP_HOME={settings.home} holds a {recorded}-profile stack, not {settings.profile}; "
            f"use another DFP_HOME for the {settings.profile} profile or `dfp stack reset --yes` to start over"
        )
    return settings.profile or recorded or "local"


def lakefs_acl_of(settings: StackSettings, profile: str | None = None) -> bool:
    """Whether this home's lakeFS uses the ACL server: fixed when lakeFS is first set up,
    because its users live in one auth store or the other. A fresh home takes
    ``DFP_LAKEFS_ACL``, else the profile's default (on in s3, off in local)."""
    if (settings.home / LAKEFS_CONFIG).is_file():
        recorded = (settings.home / ACL_MARKER).is_file()
        if settings.lakefs_acl is not None and settings.lakefs_acl != recorded:
            state = "with" if recorded else "without"
            raise StackError(
                f"DFP_HOME={settings.home} holds a lakeFS set up {state} the ACL server, so "
                f"DFP_LAKEFS_ACL={int(settings.lakefs_acl)} cannot apply; use another DFP_HOME or "
                "`dfp stack reset --yes` to start over"
            )
        return recorded
    if settings.lakefs_acl is not None:
        return settings.lakefs_acl
    return (profile or profile_of(settings)) == "s3"


def _record_profile(settings: StackSettings, profile: str) -> None:
    private_home(settings.home)
    (settings.home / PROFILE_FILE).write_text(profile + "\n")


# --------------------------------------------------------------------------- credentials


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def admin_keys(creds: dict[str, str]) -> tuple[str, str]:
    """lakeFS's admin key pair: ``DFP_LAKEFS_ADMIN_*`` in a home with the ACL server, where
    ``LAKEFS_*`` is the pipeline user's pair; else ``LAKEFS_*``."""
    names = ADMIN_KEY_ENV if creds.get(ADMIN_KEY_ENV[0]) else ("LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY")
    return creds[names[0]], creds[names[1]]


def ensure_credentials(settings: StackSettings, profile: str = "local", acl: bool = False) -> dict[str, str]:
    """Generate the key pairs and server secrets once; keep them 0600."""
    path = settings.home / STACK_ENV_FILE
    values = read_env_file(path)
    alnum = string.ascii_letters + string.digits
    upper = string.ascii_uppercase + string.digits
    required = ("LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "DFP_LAKEFS_ENCRYPT_SECRET")
    if not all(values.get(key) for key in required):
        values.update(
            {
                # lakeFS access key ids must be at most 20 characters.
                "LAKEFS_ACCESS_KEY_ID": "AKIADFP" + _random(upper, 13),
                "LAKEFS_SECRET_ACCESS_KEY": _random(alnum, 40),
                "DFP_LAKEFS_ENCRYPT_SECRET": _random(alnum, 48),
            }
        )
    if acl and not values.get(ADMIN_KEY_ENV[0]):
        values.update({ADMIN_KEY_ENV[0]: "AKIADFP" + _random(upper, 13), ADMIN_KEY_ENV[1]: _random(alnum, 40)})
    if profile == "s3":
        for key, make in (("DFP_S3_ACCESS_KEY_ID", lambda: "DFPS3" + _random(upper, 15)),
                          ("DFP_S3_SECRET_ACCESS_KEY", lambda: _random(alnum, 40)),
                          ("DFP_POSTGRES_PASSWORD", lambda: _random(alnum, 32))):
            values.setdefault(key, make())
        # New repositories get s3:// storage namespaces in the stack's bucket.
        values["LAKEFS_STORAGE_NAMESPACE"] = f"s3://{seaweedfs_server.BUCKETS[0]}/{{repo}}"
    if settings.mlflow_auth_for(profile):
        # The auth app's admin user (created on its first start) is the stack's MLflow user;
        # MLflow's clients read the pair under these names. Kept if auth is turned off and on.
        for key, make in (("MLFLOW_TRACKING_USERNAME", lambda: MLFLOW_ADMIN),
                          ("MLFLOW_TRACKING_PASSWORD", lambda: _random(alnum, 32)),
                          ("DFP_MLFLOW_FLASK_SECRET", lambda: _random(alnum, 48))):
            values.setdefault(key, make())
    # The key pair training signs models with and loading verifies them with (files beside
    # this one; a key MLflow never holds).
    private, public = signing.ensure_key_pair(settings.home / signing.KEY_DIR)
    values["DFP_MODEL_SIGNING_KEY"], values["DFP_MODEL_SIGNING_PUBLIC_KEY"] = str(private), str(public)
    # Endpoints follow the configured ports on every start.
    values["LAKEFS_ENDPOINT"] = settings.lakefs_endpoint
    values["MLFLOW_TRACKING_URI"] = settings.mlflow_endpoint
    private_home(settings.home)
    body = "# Written by `dfp stack up`. Secrets: keep this file private.\n" + "".join(
        f"{key}={value}\n" for key, value in sorted(values.items())
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.chmod(path, 0o600)
    return values


# --------------------------------------------------------------------------- services


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


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


def _service_healthy(service: Service, endpoint: str, settings: StackSettings, creds: dict[str, str]) -> bool:
    if service is POSTGRES:
        port = urlsplit(endpoint).port or settings.postgres_port
        return postgres_server.healthy(postgres_server.bin_dir(settings.postgres_bin_dir), LOOPBACK, port,
                                       creds.get("DFP_POSTGRES_PASSWORD", ""))
    if service is SEAWEEDFS:
        return seaweedfs_server.healthy(endpoint)
    return _healthy(endpoint + HEALTH_PATHS[service.name])


def _server_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    """Our environment for a server process, without variables it would read as its
    own configuration: it gets only what the stack sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def _lakefs_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
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
            "endpoint": f"http://{settings.host}:{settings.s3_port}", "region": seaweedfs_server.REGION,
            "force_path_style": True, "discover_bucket_region": False, "max_retries": 3,
        }}
        env.update({
            "LAKEFS_DATABASE_POSTGRES_CONNECTION_STRING": postgres_server.url(
                LOOPBACK, settings.postgres_port, "lakefs", creds["DFP_POSTGRES_PASSWORD"], scheme="postgres"),
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_ACCESS_KEY_ID": creds["DFP_S3_ACCESS_KEY_ID"],
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_SECRET_ACCESS_KEY": creds["DFP_S3_SECRET_ACCESS_KEY"],
        })
    config_path = settings.home / LAKEFS_CONFIG
    config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    if acl:
        (settings.home / ACL_MARKER).write_text("lakeFS asks the ACL server for users and policies\n")
    return [str(lakefs_binary(settings)), "run", "--config", str(config_path)], env


def _lakefs_acl_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
    base = settings.home / ACL_DIR
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    config: dict = {"listen_address": f"{LOOPBACK}:{settings.lakefs_acl_port}",
                    "database": {"type": "local", "local": {"path": str(base / "metadata")}}}
    env = _server_env(("ACLSERVER_",))
    # It encrypts the secret keys it stores with lakeFS's own secret, which lakeFS decrypts.
    env["ACLSERVER_ENCRYPT_SECRET_KEY"] = creds["DFP_LAKEFS_ENCRYPT_SECRET"]
    if profile == "s3":
        config["database"] = {"type": "postgres", "postgres": {"max_open_connections": 5}}
        env["ACLSERVER_DATABASE_POSTGRES_CONNECTION_STRING"] = postgres_server.url(
            LOOPBACK, settings.postgres_port, "lakefs_acl", creds["DFP_POSTGRES_PASSWORD"], scheme="postgres")
    config_path = base / "config.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    return [str(lakefs_acl_binary(settings)), "run", "--config", str(config_path)], env


def _mlflow_command(settings: StackSettings, creds: dict[str, str], profile: str) -> tuple[list[str], dict[str, str]]:
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
            "MLFLOW_BACKEND_STORE_URI": postgres_server.url(LOOPBACK, settings.postgres_port, "mlflow",
                                                            creds["DFP_POSTGRES_PASSWORD"], scheme="postgresql+psycopg2"),
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{seaweedfs_server.BUCKETS[1]}/artifacts",
            "MLFLOW_S3_ENDPOINT_URL": f"http://{settings.host}:{settings.s3_port}",
            "AWS_ACCESS_KEY_ID": creds["DFP_S3_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": creds["DFP_S3_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": seaweedfs_server.REGION,
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


def _postgres_command(settings: StackSettings, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    bindir = postgres_server.bin_dir(settings.postgres_bin_dir)
    data = postgres_server.init_cluster(settings.home, bindir, creds["DFP_POSTGRES_PASSWORD"])
    env = _server_env(("PG",))
    return postgres_server.server_command(bindir, data, LOOPBACK, settings.postgres_port), env


def _seaweedfs_command(settings: StackSettings, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    weed = seaweedfs_server.binary(REPO_ROOT, settings.cache, settings.seaweedfs_bin)
    base = settings.home / "seaweedfs"
    base.mkdir(parents=True, exist_ok=True)
    identities = seaweedfs_server.write_identities(base, creds["DFP_S3_ACCESS_KEY_ID"], creds["DFP_S3_SECRET_ACCESS_KEY"])
    ports = _internal_ports(base, settings.host)
    cmd = seaweedfs_server.server_command(weed, base, settings.host, settings.s3_port, ports, identities)
    return cmd, _server_env(("AWS_", "WEED_"))


def _internal_ports(base: Path, host: str) -> dict[str, int]:
    """SeaweedFS's internal ports: picked free once, then kept (its master remembers its
    own address), and picked again only if another program took one meanwhile."""
    path = base / "ports.json"
    try:
        ports = json.loads(path.read_text())
        if set(ports) == set(seaweedfs_server.INTERNAL_PORTS) and all(_port_free(host, p) for p in ports.values()):
            return ports
    except (OSError, ValueError):
        pass
    ports = {}
    while len(ports) < len(seaweedfs_server.INTERNAL_PORTS):
        port = free_port(host)
        # gRPC defaults to port+10000 elsewhere in SeaweedFS; stay clear of collisions.
        if port not in ports.values() and port < 55000:
            ports[seaweedfs_server.INTERNAL_PORTS[len(ports)]] = port
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


def _after_start(service: Service, settings: StackSettings, creds: dict[str, str], profile: str) -> None:
    """What a fresh server needs before the next one can use it."""
    if service is LAKEFS and profile == "s3":
        _setup_lakefs(service.endpoint(settings), creds)
    elif service is POSTGRES:
        postgres_server.ensure_databases(postgres_server.bin_dir(settings.postgres_bin_dir), LOOPBACK,
                                         settings.postgres_port, creds["DFP_POSTGRES_PASSWORD"])
    elif service is SEAWEEDFS:
        seaweedfs_server.ensure_buckets(service.endpoint(settings), creds["DFP_S3_ACCESS_KEY_ID"],
                                        creds["DFP_S3_SECRET_ACCESS_KEY"])


def _last_error_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log written"
    for line in reversed(lines):
        if re.search(r"error|fatal|exception|failed", line, re.I):
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def port_holder(port: int) -> dict | None:
    """The process listening on ``port`` (pid and command line), when this user may see it."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, PermissionError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())[:200]
            except psutil.Error:
                cmdline = "?"
            return {"pid": conn.pid, "cmdline": cmdline}
    return None


def _taken_by(port: int) -> str:
    holder = port_holder(port)
    return f"pid {holder['pid']} ({holder['cmdline']})" if holder else "another program"


def _start(service: Service, settings: StackSettings, creds: dict[str, str], profile: str, log: Log) -> ProcessRecord:
    host, port = service.host(settings), service.port(settings)
    if not _port_free(host, port):
        raise StackError(
            f"port {port} on {host} is taken by {_taken_by(port)}, so {service.name} cannot start; "
            f"stop that program or pick another port with {service.port_env}=<port>"
        )
    if service is LAKEFS:
        cmd, env = _lakefs_command(settings, creds, profile)
    elif service is LAKEFS_ACL:
        cmd, env = _lakefs_acl_command(settings, creds, profile)
    elif service is MLFLOW:
        cmd, env = _mlflow_command(settings, creds, profile)
    elif service is POSTGRES:
        cmd, env = _postgres_command(settings, creds)
    else:
        cmd, env = _seaweedfs_command(settings, creds)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{service.name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=settings.home, start_new_session=True,
        )
    record = ProcessRecord(
        name=service.name, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
        endpoint=service.endpoint(settings), log=str(log_path),
    )
    deadline = time.monotonic() + service.startup_timeout
    started = time.monotonic()
    next_note = started + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{service.name} exited during startup (code {proc.returncode}): "
                f"{_last_error_line(log_path)} [log: {log_path}]"
            )
        if _service_healthy(service, record.endpoint, settings, creds):
            _after_start(service, settings, creds, profile)
            log(f"{service.name}: healthy at {record.endpoint} after {time.monotonic() - started:.1f}s (pid {proc.pid})")
            return record
        if time.monotonic() >= next_note:
            log(f"{service.name}: waiting for {record.endpoint} ({time.monotonic() - started:.0f}s)")
            next_note += 5
        time.sleep(0.25)
    _terminate(record)
    raise StackError(
        f"{service.name} did not become healthy within {service.startup_timeout:.0f}s: "
        f"{_last_error_line(log_path)} [log: {log_path}]"
    )


def _terminate(record: ProcessRecord, timeout: float = 20) -> bool:
    """Stop the service's whole process group (TERM, then KILL); False if none was left.
    The supervisor's group alone: the servers it restarted are its children, not its group."""
    leader = record.process()
    group = record.group()
    if leader is not None and record.name != SUPERVISOR:
        group += [c for c in leader.children(recursive=True) if c not in group]
    if not group:
        return False
    for p in group:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(group, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return True


# The Kubernetes node (dfp_core.k8s) supervises its processes the same way.
terminate, port_free, last_error_line = _terminate, _port_free, _last_error_line


# --------------------------------------------------------------------------- commands


# --------------------------------------------------------------------------- supervision

SUPERVISOR = "supervisor"  # its record in state.json; dfp_core.stack_supervisor is the process
SUPERVISED_SETTINGS = "supervisor.json"  # the settings `up` ran with: what a restart needs
SUPERVISION_REPORT = "supervisor-state.json"  # what it did, by service
_PATH_FIELDS = {f.name for f in dataclasses.fields(StackSettings) if "Path" in str(f.type)}


def save_supervised_settings(settings: StackSettings) -> None:
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
    (settings.home / SUPERVISED_SETTINGS).write_text(json.dumps(values, indent=2, sort_keys=True))


def load_supervised_settings(home: Path) -> StackSettings:
    values = json.loads((home / SUPERVISED_SETTINGS).read_text())
    return StackSettings(**{k: (Path(v) if k in _PATH_FIELDS and v is not None else v) for k, v in values.items()})


def supervision_report(home: Path) -> dict:
    """What the supervisor did, by service: restarts, last_restart_at, last_error, retry_at, down_since."""
    try:
        return json.loads((home / SUPERVISION_REPORT).read_text())
    except (OSError, ValueError):
        return {}


def _start_supervisor(settings: StackSettings, log: Log) -> ProcessRecord:
    """The watchdog that restarts a server that dies (its own process group, like a server)."""
    save_supervised_settings(settings)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "supervisor.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dfp_core.stack_supervisor", "--home", str(settings.home)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=settings.home,
                                start_new_session=True)
    log(f"supervisor: watching the servers (pid {proc.pid}; log: {logs / 'supervisor.log'})")
    return ProcessRecord(name=SUPERVISOR, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                         endpoint="", log=str(logs / "supervisor.log"))


def stop_service(settings: StackSettings, name: str, log: Log = note) -> None:
    """Stop one server on purpose: the supervisor leaves it stopped until the next `up`."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        rec = records.pop(name, None)
        if rec is not None:
            _terminate(rec)
            log(f"{name}: stopped (process group {rec.pid}); `dfp stack up` starts it again")
        state.save(records)


def up(settings: StackSettings, log: Log = note, repository: str = LakeFSSettings.repository) -> dict:
    """Start what is not running yet, in order; wait until each service is healthy. With the
    ACL server, (re)write the pipeline's user and its policy over ``repository``."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        profile = profile_of(settings)
        acl = lakefs_acl_of(settings, profile)
        creds = ensure_credentials(settings, profile, acl)
        for service in services(profile, acl):
            rec = records.get(service.name)
            if rec and rec.process() is not None:
                if rec.endpoint != service.endpoint(settings):
                    raise StackError(
                        f"{service.name} is already running at {rec.endpoint} (pid {rec.pid}); "
                        "run `dfp stack down` before changing ports"
                    )
                if _service_healthy(service, rec.endpoint, settings, creds):
                    log(f"{service.name}: already running at {rec.endpoint} (pid {rec.pid})")
                    continue
                log(f"{service.name}: pid {rec.pid} is not healthy; restarting it")
                _terminate(rec)
            elif rec and rec.group():
                log(f"{service.name}: leader pid {rec.pid} is gone but {len(rec.group())} of its processes "
                    "still run; stopping them before starting again")
                _terminate(rec)
            records[service.name] = _start(service, settings, creds, profile, log)
            state.save(records)
            _record_profile(settings, profile)  # from its first server on, the home is this profile's
        if acl:
            _ensure_pipeline_user(settings, creds, repository)
            log(f"lakefs: user {lakefs_acl.PIPELINE_USER} may use repository {repository} only "
                f"(its key pair: LAKEFS_* in {settings.env_file})")
        watcher = records.get(SUPERVISOR)
        if watcher is None or watcher.process() is None:
            records[SUPERVISOR] = _start_supervisor(settings, log)
            state.save(records)
    return status(settings)


def _ensure_pipeline_user(settings: StackSettings, creds: dict[str, str], repository: str) -> None:
    lakefs_settings = LakeFSSettings(storage_namespace=creds.get("LAKEFS_STORAGE_NAMESPACE") or None)
    lakefs_acl.ensure_pipeline_user(
        LAKEFS_ACL.endpoint(settings), repository, lakefs_settings.namespace_for(repository),
        creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"],
    )


def down(settings: StackSettings, log: Log = note) -> dict:
    """Stop the processes ``up`` started (matched by pid and start time). Data is kept."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        for name in (SUPERVISOR, *reversed(ALL_SERVICES)):  # the watchdog first: it would restart them
            rec = records.pop(name, None)
            if rec is None:
                continue
            leader_alive = rec.process() is not None
            stopped = _terminate(rec)
            what = "stopped" if leader_alive else "stopped what was left of it" if stopped else "was not running"
            log(f"{name}: {what} (process group {rec.pid})")
        state.save(records)
    return status(settings)


def status(settings: StackSettings) -> dict:
    records = StackState(settings.home).load()
    profile = profile_of(settings)
    acl = lakefs_acl_of(settings, profile)
    creds = read_env_file(settings.home / STACK_ENV_FILE)
    report = supervision_report(settings.home)
    entries = {}
    for service in services(profile, acl):
        rec = records.get(service.name)
        alive = rec is not None and rec.process() is not None
        endpoint = rec.endpoint if rec else service.endpoint(settings)
        entry = {
            "endpoint": endpoint,
            "pid": rec.pid if alive else None,
            "running": alive,
            "healthy": alive and _service_healthy(service, endpoint, settings, creds),
            "log": rec.log if rec else str(settings.home / "logs" / f"{service.name}.log"),
        }
        if service is LAKEFS and acl:
            entry["pipeline_user"] = lakefs_acl.PIPELINE_USER
        if service is MLFLOW:  # as it runs, else as it would start
            entry["basic_auth"] = ("basic-auth" in _cmdline(rec.process())) if alive else settings.mlflow_auth_for(profile)
        if rec is not None and not alive:
            left = sorted(p.pid for p in rec.group())
            if left:  # `dfp stack down` or `up` stops them
                entry["orphaned_pids"] = left
        if not alive:
            holder = port_holder(urlsplit(endpoint).port or service.port(settings))
            if holder:
                entry["port_taken_by"] = holder
        supervised = report.get(service.name, {})
        entry["restarts"] = supervised.get("restarts", 0)
        if supervised.get("last_restart_at"):
            entry["last_restart_at"] = supervised["last_restart_at"]
        if supervised.get("down_since") and rec is not None and not alive:  # the supervisor is on it
            entry["restarting"] = {k: supervised[k] for k in ("down_since", "last_error", "retry_at") if k in supervised}
        entries[service.name] = entry
    watcher = records.get(SUPERVISOR)
    return {
        "home": str(settings.home),
        "supervisor": {"running": watcher is not None and watcher.process() is not None,
                       "pid": watcher.pid if watcher else None, "log": str(settings.home / "logs" / "supervisor.log")},
        "profile": profile,
        "credentials_file": str(settings.home / STACK_ENV_FILE),
        "services": entries,
        "lakefs_ui": entries["lakefs"]["endpoint"],
        "mlflow_ui": entries["mlflow"]["endpoint"],
    }


def _cmdline(process: psutil.Process | None) -> list[str]:
    try:
        return process.cmdline() if process else []
    except psutil.Error:
        return []


def reset(settings: StackSettings, log: Log = note) -> None:
    """Stop everything and delete all stack data (repositories, runs, credentials)."""
    import shutil

    with contextlib.suppress(StackError):  # a corrupt state file is what reset is for
        down(settings, log)
    postgres_server.remove_data(settings.home)
    if settings.home.is_dir():
        shutil.rmtree(settings.home)
    elif settings.home.exists():
        settings.home.unlink()
    log(f"removed {settings.home}")


# --------------------------------------------------------------------------- private stacks


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now: for private stacks (tests, benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(settings: StackSettings, log: Log = note, repository: str = LakeFSSettings.repository) -> Iterator[dict]:
    """A private stack for a block (tests, benchmarks): started, then stopped.
    Yields ``{"status": up(...), "env": what a process needs to use it}``
    (``DFP_HOME`` and the ports; commands read the rest from ``stack.env``)."""
    status = up(settings, log=log, repository=repository)
    env = {
        "DFP_HOME": str(settings.home),
        "DFP_LAKEFS_PORT": str(settings.lakefs_port),
        "DFP_MLFLOW_PORT": str(settings.mlflow_port),
    }
    if settings.host != LOOPBACK:
        env["DFP_STACK_HOST"] = settings.host
    if profile_of(settings) == "s3":
        env.update({"DFP_POSTGRES_PORT": str(settings.postgres_port), "DFP_S3_PORT": str(settings.s3_port)})
    if lakefs_acl_of(settings):
        env["DFP_LAKEFS_ACL_PORT"] = str(settings.lakefs_acl_port)
    try:
        yield {"status": status, "env": env, "credentials": read_env_file(settings.env_file)}
    finally:
        down(settings, log=lambda m: None)
        # As root the s3 profile's cluster lives outside the home; a private stack takes it along.
        postgres_server.remove_data(settings.home)
