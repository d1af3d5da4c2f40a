"""Starting, watching and stopping the stack's servers: ``up`` (in order, each healthy before
the next, then the supervisor that restarts a server that dies), ``down`` (only processes whose
pid *and* start time match what ``up`` recorded), ``status``, ``reset`` and ``running`` (a
private stack for a block)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import psutil

from dfp_core.errors import StackError
from dfp_core.progress import note
from dfp_core.settings import STACK_ENV_FILE, LakeFSSettings, StackSettings, read_env_file
from dfp_core.stack import lakefs_acl, postgres
from dfp_core.stack.credentials import ensure_credentials
from dfp_core.stack.ports import port_free, port_holder, taken_by
from dfp_core.stack.servers import (ALL_SERVICES, LAKEFS, LOOPBACK, MLFLOW, Service, after_start, command,
                                     ensure_pipeline_user, service_healthy, services)
from dfp_core.stack.state import ProcessRecord, StackState, lakefs_acl_of, profile_of, record_profile

Log = Callable[[str], None]
SUPERVISOR = "supervisor"  # its record in state.json; dfp_core.stack_supervisor is the process
SUPERVISED_SETTINGS = "supervisor.json"  # the settings `up` ran with: what a restart needs
SUPERVISION_REPORT = "supervisor-state.json"  # what it did, by service
_PATH_FIELDS = {f.name for f in dataclasses.fields(StackSettings) if "Path" in str(f.type)}


def last_error_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log written"
    for line in reversed(lines):
        if re.search(r"error|fatal|exception|failed", line, re.I):
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def start(service: Service, settings: StackSettings, creds: dict[str, str], profile: str, log: Log) -> ProcessRecord:
    """Start ``service`` and wait until it is healthy (and set up: ``after_start``)."""
    record, proc = spawn(service, settings, creds, profile)
    return _until_healthy(service, record, settings, creds, profile, log,
                          lambda: None if proc.poll() is None else f"code {proc.returncode}")


def spawn(service: Service, settings: StackSettings, creds: dict[str, str], profile: str
          ) -> tuple[ProcessRecord, subprocess.Popen]:
    """Start ``service``'s process (its own session, output to its log) without waiting."""
    host, port = service.host(settings), service.port(settings)
    if not port_free(host, port):
        raise StackError(
            f"port {port} on {host} is taken by {taken_by(port)}, so {service.name} cannot start; "
            f"stop that program or pick another port with {service.port_env}=<port>"
        )
    cmd, env = command(service, settings, creds, profile)
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
    return record, proc


def _until_healthy(service: Service, record: ProcessRecord, settings: StackSettings, creds: dict[str, str],
                   profile: str, log: Log, exited: Callable[[], str | None]) -> ProcessRecord:
    """Poll until ``record``'s server answers (then ``after_start``); one line naming its log
    when it exits first or its startup timeout, counted from its process's start, passes."""
    log_path = Path(record.log)
    deadline = record.create_time + service.startup_timeout
    next_note = time.time() + 5
    while time.time() < deadline:
        how = exited()
        if how is not None:
            raise StackError(
                f"{service.name} exited during startup ({how}): "
                f"{last_error_line(log_path)} [log: {log_path}]"
            )
        if service_healthy(service, record.endpoint, settings, creds):
            try:
                after_start(service, settings, creds, profile)
            except StackError as exc:  # a server that answers but cannot do its job: its log says why
                terminate(record)  # not in the stack's state yet, so no `stack down` would stop it
                raise StackError(f"{exc} [log: {log_path}]") from None
            log(f"{service.name}: healthy at {record.endpoint} after {time.time() - record.create_time:.1f}s "
                f"(pid {record.pid})")
            return record
        if time.time() >= next_note:
            log(f"{service.name}: waiting for {record.endpoint} ({time.time() - record.create_time:.0f}s)")
            next_note += 5
        time.sleep(0.25)
    terminate(record)
    raise StackError(
        f"{service.name} did not become healthy within {service.startup_timeout:.0f}s: "
        f"{last_error_line(log_path)} [log: {log_path}]"
    )


def await_service(settings: StackSettings, name: str, endpoint: str, log: Log = note) -> None:
    """Wait for a server of this home's stack that ``up(..., ready_later=...)`` left starting:
    nothing to do unless the recorded ``name`` serves ``endpoint`` and its process is alive
    (a command then checks the endpoint itself, as for any server). Fails in one line, naming
    its log, if it exits or its startup timeout passes."""
    try:
        rec = StackState(settings.home).load().get(name)
    except OSError:  # a home this user may not read (a container's step): not its stack
        return
    if rec is None or rec.endpoint.rstrip("/") != endpoint.rstrip("/") or rec.process() is None:
        return
    profile = profile_of(settings)
    service = next(s for s in services(profile, True) if s.name == name)
    creds = read_env_file(settings.env_file)
    if service_healthy(service, rec.endpoint, settings, creds):
        return
    log(f"{name}: still starting at {rec.endpoint}; waiting for it")
    _until_healthy(service, rec, settings, creds, profile, log, _gone(rec))


def _gone(record: ProcessRecord) -> Callable[[], str | None]:
    """How ``_until_healthy`` sees a recorded server that is not our child (its exit code is
    not ours to read): gone once its pid and start time no longer match."""
    return lambda: None if record.process() is not None else f"pid {record.pid}"


def terminate(record: ProcessRecord, timeout: float = 20) -> bool:
    """Stop the service's whole process group (TERM, then KILL); False if none was left.
    The supervisor's group alone: the servers it restarted are its children, not its group.
    The Kubernetes node (``dfp_core.k8s``) stops its processes with it too."""
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
            terminate(rec)
            log(f"{name}: stopped (process group {rec.pid}); `dfp stack up` starts it again")
        state.save(records)


def up(settings: StackSettings, log: Log = note, repository: str = LakeFSSettings.repository,
       ready_later: tuple[str, ...] = ()) -> dict:
    """Start what is not running yet, in order; wait until each service is healthy. With the
    ACL server, (re)write the pipeline's user and its policy over ``repository``.

    The services named in ``ready_later`` (the last ones in order: nothing after them may
    need them) are started but not waited for; whoever uses one first waits with
    ``await_service``. The quickstart's transform needs no MLflow, so MLflow's start (two
    Python processes importing it) runs beside it."""
    state = StackState(settings.home)
    with state.locked():
        records = state.load()
        profile = profile_of(settings)
        acl = lakefs_acl_of(settings, profile)
        creds = ensure_credentials(settings, profile, acl)
        ordered = services(profile, acl)
        names = [service.name for service in ordered]
        if any(name not in names for name in ready_later) or \
                names[len(names) - len(ready_later):] != [n for n in names if n in ready_later]:
            raise StackError(f"only the last services in start order ({', '.join(names)}) can be left starting; "
                             f"asked: {', '.join(ready_later)}")
        for service in ordered:
            rec = records.get(service.name)
            if rec and rec.process() is not None:
                if rec.endpoint != service.endpoint(settings):
                    raise StackError(
                        f"{service.name} is already running at {rec.endpoint} (pid {rec.pid}); "
                        "run `dfp stack down` before changing ports"
                    )
                if service_healthy(service, rec.endpoint, settings, creds):
                    log(f"{service.name}: already running at {rec.endpoint} (pid {rec.pid})")
                    continue
                if time.time() < rec.create_time + service.startup_timeout:
                    # Still starting (an earlier `up` left it so): leave it be, or wait for it;
                    # one that dies or hangs meanwhile is started again below.
                    if service.name in ready_later:
                        continue
                    log(f"{service.name}: pid {rec.pid} is still starting; waiting for it")
                    with contextlib.suppress(StackError):
                        _until_healthy(service, rec, settings, creds, profile, log, _gone(rec))
                        continue
                log(f"{service.name}: pid {rec.pid} is not healthy; restarting it")
                terminate(rec)
            elif rec and rec.group():
                log(f"{service.name}: leader pid {rec.pid} is gone but {len(rec.group())} of its processes "
                    "still run; stopping them before starting again")
                terminate(rec)
            if service.name in ready_later:
                started, _ = spawn(service, settings, creds, profile)
                log(f"{service.name}: starting at {started.endpoint} (pid {started.pid}); not waited for")
            else:
                started = start(service, settings, creds, profile, log)
            records[service.name] = started
            state.save(records)
            record_profile(settings, profile)  # from its first server on, the home is this profile's
        if acl:
            ensure_pipeline_user(settings, creds, repository)
            log(f"lakefs: user {lakefs_acl.PIPELINE_USER} may use repository {repository} only "
                f"(its key pair: LAKEFS_* in {settings.env_file})")
        watcher = records.get(SUPERVISOR)
        if watcher is None or watcher.process() is None:
            records[SUPERVISOR] = _start_supervisor(settings, log)
            state.save(records)
    return status(settings)


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
            stopped = terminate(rec)
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
            "healthy": alive and service_healthy(service, endpoint, settings, creds),
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
    with contextlib.suppress(StackError):  # a corrupt state file is what reset is for
        down(settings, log)
    postgres.remove_data(settings.home)
    if settings.home.is_dir():
        shutil.rmtree(settings.home)
    elif settings.home.exists():
        settings.home.unlink()
    log(f"removed {settings.home}")


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
        postgres.remove_data(settings.home)
