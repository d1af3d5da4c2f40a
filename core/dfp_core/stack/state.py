"""A stack's home and state: ``$DFP_HOME`` (0700), ``state.json`` (the processes ``up``
started, each a process group), the profile the home was set up with, and whether its lakeFS
uses the ACL server."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from dfp_core.errors import StackError
from dfp_core.settings import STACK_PROFILES, StackSettings

STATE_FILE = "state.json"
PROFILE_FILE = "profile"
ACL_DIR = "lakefs-acl"  # the ACL server's own data
# Written beside lakeFS's config when lakeFS is set up to use the ACL server.
ACL_MARKER = Path("lakefs") / "auth-acl"
LAKEFS_CONFIG = Path("lakefs") / "config.yaml"


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


def record_profile(settings: StackSettings, profile: str) -> None:
    private_home(settings.home)
    (settings.home / PROFILE_FILE).write_text(profile + "\n")
