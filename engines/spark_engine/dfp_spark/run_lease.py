"""Who is working on a transform run, for as long as the run exists.

A run lives from the creation of its branch ``run-<id>`` through its commit, the
freeze (the branch becomes a tag of the same name) and the merge of that tag. A lease
written on the run branch itself would vanish with the commit and the freeze, and a
``dfp runs gc`` in that window would take a live run for an abandoned one. So each run's
lease is an object ``leases/run-<id>.json`` on a bookkeeping branch of its own
(``LEASE_BRANCH``), never committed: it is written before the run branch is created,
refreshed while the run works, and deleted only after the merge (or the run's own
clean-up). It names the process that holds it (host, pid and the pid's start time, so
a reused pid is not taken for the owner), or no process while the run waits between two
pipeline steps.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import psutil

from dfp_core.errors import DfpError, RefNotFoundError
from dfp_core.lakefs_ops import LakeFS

LEASE_BRANCH = "dfp-run-leases"
# Often enough that a run on another host (a pod) never looks idle to a gc with a short
# --older-than; each beat is one small upload to the lease branch.
HEARTBEAT_S = 30.0


LEASES_PREFIX = "leases/"


def lease_path(run_ref: str) -> str:
    return f"{LEASES_PREFIX}{run_ref}.json"


@dataclass(frozen=True)
class Lease:
    run_ref: str
    stage: str
    updated_at: float
    host: str
    pid: int | None = None  # None: handed over, no process holds it (between pipeline steps)
    pid_started: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Lease":
        return cls(run_ref=str(data["run_ref"]), stage=str(data.get("stage", "")), updated_at=float(data["updated_at"]),
                   host=str(data.get("host", "")), pid=data.get("pid"), pid_started=data.get("pid_started"))

    def owner_alive(self) -> bool | None:
        """True: its process still runs on this host; False: that process is provably gone;
        None: it cannot be told from here (another host, or no process named)."""
        if self.pid is None or self.host != socket.gethostname():
            return None
        try:
            started = psutil.Process(int(self.pid)).create_time()
        except (psutil.NoSuchProcess, ValueError):
            return False
        except psutil.Error:  # exists, but not ours to inspect: count it as running
            return True
        return self.pid_started is None or abs(started - float(self.pid_started)) < 1.0


def read_lease(lakefs: LakeFS, repo: str, run_ref: str) -> Lease | None:
    try:
        return Lease.from_dict(json.loads(lakefs.read_bytes(repo, LEASE_BRANCH, lease_path(run_ref))))
    except RefNotFoundError:  # no lease (a run from before leases, or one that is done), or no lease branch
        return None
    except (ValueError, KeyError, TypeError):  # torn or foreign: judged by age like no lease
        return None


def _this_process() -> tuple[int, float]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time()


class RunLease:
    """The lease of one run, held by this process (``hold``) or handed over (``hand_over``)."""

    def __init__(self, lakefs: LakeFS, repo: str, run_ref: str):
        self.lakefs, self.repo, self.run_ref = lakefs, repo, run_ref
        self._stage = "starting"
        self._lock = threading.Lock()

    def _ensure_branch(self) -> None:
        if not self.lakefs.branch_exists(self.repo, LEASE_BRANCH):  # exist_ok: another run may create it first
            self.lakefs.create_branch(self.repo, LEASE_BRANCH, self.lakefs.default_branch(self.repo), exist_ok=True)

    def _write(self, pid: int | None, pid_started: float | None) -> None:
        lease = Lease(self.run_ref, self._stage, time.time(), socket.gethostname(), pid, pid_started)
        with self._lock:
            self.lakefs.upload_bytes(self.repo, LEASE_BRANCH, lease_path(self.run_ref),
                                     json.dumps(lease.to_dict(), sort_keys=True).encode())

    def acquire(self, stage: str) -> "RunLease":
        """Take the lease for this process (before the run branch exists, or from a previous step)."""
        self._ensure_branch()
        self._stage = stage
        self._write(*_this_process())
        return self

    def stage(self, stage: str) -> None:
        self._stage = stage
        self._write(*_this_process())

    def hand_over(self, stage: str) -> None:
        """This process is done with its part; the next step takes the lease. Until then
        the run is judged by the lease's age."""
        self._stage = stage
        self._write(None, None)

    def release(self) -> None:
        """The run is merged or cleaned up: nothing of it is left for gc to judge."""
        try:
            with self._lock:
                self.lakefs.delete_object(self.repo, LEASE_BRANCH, lease_path(self.run_ref))
        except RefNotFoundError:
            pass

    @contextmanager
    def heartbeat(self, interval_s: float = HEARTBEAT_S) -> Iterator["RunLease"]:
        """Refresh the lease every ``interval_s`` while the block runs (a long Spark job)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                try:
                    self._write(*_this_process())
                except DfpError:  # lakeFS briefly away: the next beat tries again
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{self.run_ref}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)
