"""PostgreSQL for the stack's s3 profile: a private cluster made with ``initdb``,
listening on loopback TCP only, holding the lakeFS KV store and the MLflow backend
store (one database each).

PostgreSQL refuses to run as root. Run as root (CI), the cluster runs as the
``postgres`` user that Debian's package creates, and its data lives outside the
0700 DFP_HOME, under ``/var/lib/dfp/postgres/<id of DFP_HOME>``, where that user
can reach it.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import logging
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from dfp_core.errors import StackError

USER = "dfp"
DATABASES = ("lakefs", "mlflow", "lakefs_acl")  # lakefs_acl: lakeFS's ACL server, where it runs
SERVICE_USER = "postgres"  # who runs the server when we are root
ROOT_DATA_BASE = Path("/var/lib/dfp/postgres")
# What initdb stores for USER's password (RFC 5803): iterations, salt, StoredKey, ServerKey.
_SCRAM = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")

log = logging.getLogger(__name__)


def bin_dir(override: Path | None = None) -> Path:
    """The folder with ``initdb``, ``postgres`` and ``psql``: ``$DFP_POSTGRES_BIN_DIR``, the
    newest Debian install (``/usr/lib/postgresql/<major>/bin``), or ``initdb`` on PATH."""
    if override is not None:
        candidates = [override]
    else:
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                        if Path(d).parent.name.isdigit() else 0)
        on_path = shutil.which("initdb")
        candidates = [Path(d) for d in reversed(debian)] + ([Path(on_path).resolve().parent] if on_path else [])
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "postgres", "psql")):
            return folder
    where = f"DFP_POSTGRES_BIN_DIR={override}" if override else "/usr/lib/postgresql/*/bin or PATH"
    raise StackError(
        f"PostgreSQL is not installed (no initdb, postgres and psql in {where}); the s3 profile needs it: "
        "`apt-get install postgresql` (`make setup-s3` does this when run as root), or set DFP_POSTGRES_BIN_DIR"
    )


def _service_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None for ourselves, ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise StackError(
            "PostgreSQL cannot run as root and there is no 'postgres' user to run it as; "
            "install Debian's postgresql package (it creates that user) or run the stack as another user"
        ) from None


def data_dir(home: Path) -> Path:
    if os.geteuid() != 0:
        return home / "postgres" / "data"
    return ROOT_DATA_BASE / hashlib.sha256(str(home).encode()).hexdigest()[:16]


def _as_service(cmd: list[str]) -> list[str]:
    account = _service_account()
    if account is None:
        return cmd
    # setpriv execs (no parent left behind), so the pid we record is the server's own.
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *cmd]


def init_cluster(home: Path, bindir: Path, password: str) -> Path:
    """``initdb`` once (idempotent): user ``dfp`` with ``password``, scram-sha-256 on TCP.
    A cluster already there is kept if ``password`` opens it (see ``_remove_orphan``); a home
    whose objects outlived its cluster is refused rather than given an empty one."""
    data = data_dir(home)
    if (data / "PG_VERSION").is_file():
        if _opens_with(bindir, data, password) is not False:
            return data
        _remove_orphan(home, data)
    elif _holds_objects(home):
        where = "restore it" if data.is_relative_to(home) else (
            f"as root the cluster lives in {ROOT_DATA_BASE}/<id of the home's path>, so a moved home leaves it "
            "behind: move the home back")
        raise StackError(f"DFP_HOME {home} holds objects but its PostgreSQL cluster ({data}) is missing; {where}, "
                         "or start afresh with `dfp stack reset`")
    account = _service_account()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    pwfile = data.parent / f".{data.name}.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    try:
        if account is not None:
            os.chown(data, account.pw_uid, account.pw_gid)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        result = subprocess.run(
            _as_service([str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                         "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-instructions"]),
            capture_output=True, text=True,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"initdb of the stack's PostgreSQL cluster failed: {last[0]}")
    return data


def stored_verifier(bindir: Path, data: Path) -> str | None:
    """The SCRAM verifier the stopped cluster holds for USER, read in single-user mode (no
    login, some 40 ms); None where it cannot be read (the server running, say)."""
    try:
        result = subprocess.run(
            _as_service([str(bindir / "postgres"), "--single", "-D", str(data), "-j", "postgres"]),
            input=f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}';\n",
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _SCRAM.search(result.stdout)
    return found.group(0) if found else None


def scram_matches(verifier: str, password: str) -> bool:
    """Whether ``password`` logs in against a SCRAM-SHA-256 verifier (RFC 5802's StoredKey)."""
    iterations, salt, stored_key, _ = _SCRAM.fullmatch(verifier).groups()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


def _opens_with(bindir: Path, data: Path, password: str) -> bool | None:
    verifier = stored_verifier(bindir, data)
    return None if verifier is None else scram_matches(verifier, password)


def _holds_objects(home: Path) -> bool:
    """Whether the home's object store has started: its cluster is then the home's own."""
    return (home / "seaweedfs").exists()


def _remove_orphan(home: Path, data: Path) -> None:
    """A cluster that the home's password does not open. As root it lives outside DFP_HOME,
    keyed by the home's path, so a home deleted by hand and made again at the same path
    finds the old one: its password left with the old stack.env, and its rows name objects
    that left with the old home. That one is removed. One beside a home that still holds
    objects is that home's own, with stack.env lost or replaced: refused, nothing deleted."""
    if _holds_objects(home):
        raise StackError(
            f"the stack's PostgreSQL cluster ({data}) does not accept the password in {home / 'stack.env'}; "
            "restore that file, or start afresh with `dfp stack reset`"
        )
    log.warning("removing the PostgreSQL cluster %s, left by an earlier DFP_HOME at %s (nothing can log in to it)",
                data, home)
    shutil.rmtree(data)


def server_command(bindir: Path, data: Path, host: str, port: int) -> list[str]:
    """The server in the foreground, TCP on ``host`` only (no Unix socket to collide with a
    system cluster's), logging to stderr, which the stack sends to its log file."""
    return _as_service([
        str(bindir / "postgres"), "-D", str(data), "-h", host, "-p", str(port),
        "-c", "unix_socket_directories=", "-c", "logging_collector=off", "-c", "max_connections=200",
    ])


def _psql(bindir: Path, host: str, port: int, password: str, sql: str, database: str = "postgres",
          timeout: float = 10) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "3"}
    return subprocess.run(
        [str(bindir / "psql"), "-h", host, "-p", str(port), "-U", USER, "-d", database, "-XAtq",
         "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def healthy(bindir: Path, host: str, port: int, password: str) -> bool:
    try:
        return _psql(bindir, host, port, password, "SELECT 1").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_databases(bindir: Path, host: str, port: int, password: str) -> None:
    for name in DATABASES:
        found = _psql(bindir, host, port, password, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if found.returncode == 0 and found.stdout.strip() == "1":
            continue
        created = _psql(bindir, host, port, password, f'CREATE DATABASE "{name}"')
        if created.returncode != 0:
            raise StackError(f"cannot create database {name} in the stack's PostgreSQL: {created.stderr.strip()}")


def url(host: str, port: int, database: str, password: str, scheme: str = "postgresql") -> str:
    """A connection URL with the password in it: only ever passed in a child's environment."""
    return f"{scheme}://{USER}:{quote(password, safe='')}@{host}:{port}/{database}?sslmode=disable"


def remove_data(home: Path) -> None:
    """What ``reset`` deletes besides DFP_HOME: the cluster kept outside it when run as root."""
    data = data_dir(home)
    if not data.is_relative_to(home):
        shutil.rmtree(data, ignore_errors=True)
