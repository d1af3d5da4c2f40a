"""The local stack: a real lakeFS server (local KV + local blockstore) and a real
MLflow tracking server (SQLite backend + registry, artifacts served by the
server), started as background processes that outlive the command.

``$DFP_HOME`` holds everything: ``state.json`` (pids and endpoints), the
generated credentials in ``stack.env`` (mode 0600), data and logs. ``down``
stops only processes whose pid *and* start time match what ``up`` recorded.
"""

from __future__ import annotations

import contextlib
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

from dfp_core.errors import StackError
from dfp_core.progress import note
from dfp_core.settings import REPO_ROOT, STACK_ENV_FILE, StackSettings, read_env_file

STATE_FILE = "state.json"
SERVICES = ("lakefs", "mlflow")
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


# --------------------------------------------------------------------------- credentials


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def ensure_credentials(settings: StackSettings) -> dict[str, str]:
    """Generate the admin key pair and server secrets once; keep them 0600."""
    path = settings.home / STACK_ENV_FILE
    values = read_env_file(path)
    required = ("LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "DFP_LAKEFS_ENCRYPT_SECRET")
    if not all(values.get(key) for key in required):
        upper = string.ascii_uppercase + string.digits
        values.update(
            {
                # lakeFS access key ids must be at most 20 characters.
                "LAKEFS_ACCESS_KEY_ID": "AKIADFP" + _random(upper, 13),
                "LAKEFS_SECRET_ACCESS_KEY": _random(string.ascii_letters + string.digits, 40),
                "DFP_LAKEFS_ENCRYPT_SECRET": _random(string.ascii_letters + string.digits, 48),
            }
        )
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


@dataclass(frozen=True)
class Service:
    name: str
    port_env: str
    health_path: str
    startup_timeout: float

    def port(self, settings: StackSettings) -> int:
        return settings.lakefs_port if self.name == "lakefs" else settings.mlflow_port

    def endpoint(self, settings: StackSettings) -> str:
        return settings.lakefs_endpoint if self.name == "lakefs" else settings.mlflow_endpoint


LAKEFS = Service("lakefs", "DFP_LAKEFS_PORT", "/api/v1/healthcheck", 90)
MLFLOW = Service("mlflow", "DFP_MLFLOW_PORT", "/health", 120)


def _lakefs_command(settings: StackSettings, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
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
    config_path = base / "config.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    # lakeFS reads LAKEFS_* variables as config keys: give it only ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEFS_")}
    env.update(
        {
            "LAKEFS_INSTALLATION_ACCESS_KEY_ID": creds["LAKEFS_ACCESS_KEY_ID"],
            "LAKEFS_INSTALLATION_SECRET_ACCESS_KEY": creds["LAKEFS_SECRET_ACCESS_KEY"],
            "LAKEFS_AUTH_ENCRYPT_SECRET_KEY": creds["DFP_LAKEFS_ENCRYPT_SECRET"],
        }
    )
    return [str(lakefs_binary(settings)), "run", "--config", str(config_path)], env


def _mlflow_command(settings: StackSettings) -> tuple[list[str], dict[str, str]]:
    base = settings.home / "mlflow"
    (base / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host,
        "--port", str(settings.mlflow_port),
        "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
        "--artifacts-destination", str(base / "artifacts"),
        "--serve-artifacts",
        "--workers", "1",
    ]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow 3 sends usage telemetry to mlflow-telemetry.io unless told not to; a local
    # stack talks to nothing outside this machine (as lakeFS's stats are off).
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return cmd, env


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


def _start(service: Service, settings: StackSettings, creds: dict[str, str], log: Log) -> ProcessRecord:
    host, port = settings.host, service.port(settings)
    if not _port_free(host, port):
        raise StackError(
            f"port {port} on {host} is taken by {_taken_by(port)}, so {service.name} cannot start; "
            f"stop that program or pick another port with {service.port_env}=<port>"
        )
    if service is LAKEFS:
        cmd, env = _lakefs_command(settings, creds)
    else:
        cmd, env = _mlflow_command(settings)
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
    url = record.endpoint + service.health_path
    deadline = time.monotonic() + service.startup_timeout
    started = time.monotonic()
    next_note = started + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{service.name} exited during startup (code {proc.returncode}): "
                f"{_last_error_line(log_path)} [log: {log_path}]"
            )
        if _healthy(url):
            log(f"{service.name}: healthy at {record.endpoint} after {time.monotonic() - started:.1f}s (pid {proc.pid})")
            return record
        if time.monotonic() >= next_note:
            log(f"{service.name}: waiting for {url} ({time.monotonic() - started:.0f}s)")
            next_note += 5
        time.sleep(0.25)
    _terminate(record)
    raise StackError(
        f"{service.name} did not become healthy within {service.startup_timeout:.0f}s: "
        f"{_last_error_line(log_path)} [log: {log_path}]"
    )


def _terminate(record: ProcessRecord, timeout: float = 20) -> bool:
    """Stop the service's whole process group (TERM, then KILL); False if none was left."""
    leader = record.process()
    group = record.group()
    if leader is not None:
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


# --------------------------------------------------------------------------- commands


def up(settings: StackSettings, log: Log = note) -> dict:
    """Start what is not running yet; wait until both services are healthy."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        creds = ensure_credentials(settings)
        for service in (LAKEFS, MLFLOW):
            rec = records.get(service.name)
            if rec and rec.process() is not None:
                if rec.endpoint != service.endpoint(settings):
                    raise StackError(
                        f"{service.name} is already running at {rec.endpoint} (pid {rec.pid}); "
                        "run `dfp stack down` before changing ports"
                    )
                if _healthy(rec.endpoint + service.health_path):
                    log(f"{service.name}: already running at {rec.endpoint} (pid {rec.pid})")
                    continue
                log(f"{service.name}: pid {rec.pid} is not healthy; restarting it")
                _terminate(rec)
            elif rec and rec.group():
                log(f"{service.name}: leader pid {rec.pid} is gone but {len(rec.group())} of its processes "
                    "still run; stopping them before starting again")
                _terminate(rec)
            records[service.name] = _start(service, settings, creds, log)
            state.save(records)
    return status(settings)


def down(settings: StackSettings, log: Log = note) -> dict:
    """Stop the processes ``up`` started (matched by pid and start time). Data is kept."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        for name in reversed(SERVICES):
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
    services = {}
    for service in (LAKEFS, MLFLOW):
        rec = records.get(service.name)
        alive = rec is not None and rec.process() is not None
        endpoint = rec.endpoint if rec else service.endpoint(settings)
        entry = {
            "endpoint": endpoint,
            "pid": rec.pid if alive else None,
            "running": alive,
            "healthy": alive and _healthy(endpoint + service.health_path),
            "log": rec.log if rec else str(settings.home / "logs" / f"{service.name}.log"),
        }
        if rec is not None and not alive:
            left = sorted(p.pid for p in rec.group())
            if left:  # `dfp stack down` or `up` stops them
                entry["orphaned_pids"] = left
        if not alive:
            holder = port_holder(urlsplit(endpoint).port or service.port(settings))
            if holder:
                entry["port_taken_by"] = holder
        services[service.name] = entry
    return {
        "home": str(settings.home),
        "credentials_file": str(settings.home / STACK_ENV_FILE),
        "services": services,
        "lakefs_ui": services["lakefs"]["endpoint"],
        "mlflow_ui": services["mlflow"]["endpoint"],
    }


def reset(settings: StackSettings, log: Log = note) -> None:
    """Stop everything and delete all stack data (repositories, runs, credentials)."""
    import shutil

    with contextlib.suppress(StackError):  # a corrupt state file is what reset is for
        down(settings, log)
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
def running(settings: StackSettings, log: Log = note) -> Iterator[dict]:
    """A private stack for a block (tests, benchmarks): started, then stopped.
    Yields ``{"status": up(...), "env": what a process needs to use it}``
    (``DFP_HOME`` and the ports; commands read the rest from ``stack.env``)."""
    status = up(settings, log=log)
    env = {
        "DFP_HOME": str(settings.home),
        "DFP_LAKEFS_PORT": str(settings.lakefs_port),
        "DFP_MLFLOW_PORT": str(settings.mlflow_port),
    }
    try:
        yield {"status": status, "env": env, "credentials": read_env_file(settings.env_file)}
    finally:
        down(settings, log=lambda m: None)
