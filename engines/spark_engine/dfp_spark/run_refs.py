"""Transform runs left behind, and their clean-up (`dfp runs list`, `dfp runs gc`).

A run works on a branch ``run-<id>``; publishing freezes it as a tag of the same name
and merges the tag. A run killed on the way leaves one of:
  - a run branch with uncommitted objects (killed during upload or the Spark write),
  - a run branch at an unmerged run commit (killed after the commit),
  - an unmerged run tag (killed between the freeze and the merge, or inside it).
Each also blocks retrying the same ``--run-id``.

Merged run tags are the lineage contract (Iceberg paths name them) and are never
removed. A run is *active*, and left alone, while its lease (``LEASE_PATH``) names a
live process on this host, or while it moved less than ``older_than`` ago; otherwise
it is *abandoned*. No ref other than ``run-*`` branches and tags is ever touched.
Deleting a branch drops its uncommitted objects from every ref; their bytes are
reclaimed by lakeFS's own garbage collection, as for any deleted branch.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import asdict, dataclass

from dfp_core.errors import ConfigError, DfpError, RefNotFoundError
from dfp_core.lakefs_ops import LakeFS
from dfp_spark.transform_run import LEASE_PATH, RUN_PREFIX

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``24h`` or ``7d``."""
    match = DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"--older-than {text!r}: expected a number and a unit, such as 30m, 24h or 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass
class RunRef:
    name: str
    kind: str  # "branch" | "tag"
    commit_id: str
    state: str  # "merged" | "active" | "abandoned"
    last_activity: float
    age_s: float
    uncommitted_objects: int = 0
    lease: dict | None = None
    why: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _lease(lakefs: LakeFS, repo: str, branch: str) -> dict | None:
    try:
        return json.loads(lakefs.read_bytes(repo, branch, LEASE_PATH))
    except (RefNotFoundError, ValueError):  # no lease (an older run, or none written yet), or a torn one
        return None


def _lease_is_live(lease: dict | None) -> bool:
    """The lease names a process on this host that still runs."""
    if not lease or lease.get("host") != socket.gethostname():
        return False
    import psutil

    try:
        return psutil.pid_exists(int(lease["pid"]))
    except (KeyError, TypeError, ValueError):
        return False


def _merged(lakefs: LakeFS, repo: str, tag: str, branches: list[str]) -> str | None:
    for branch in branches:
        try:
            if lakefs.is_merged_into(repo, tag, branch):
                return branch
        except RefNotFoundError:  # no common history
            continue
    return None


def list_runs(lakefs: LakeFS, repo: str, older_than_s: float, now: float | None = None) -> list[RunRef]:
    """Every ``run-*`` branch and tag of ``repo`` with its state, oldest first."""
    now = time.time() if now is None else now
    branches = lakefs.branches(repo)
    others = sorted(b for b in branches if not b.startswith(RUN_PREFIX))
    runs: list[RunRef] = []
    for name, commit in sorted((b, c) for b, c in branches.items() if b.startswith(RUN_PREFIX)):
        lease = _lease(lakefs, repo, name)
        activity = max(lakefs.commit_time(repo, name), float((lease or {}).get("updated_at", 0)))
        age = now - activity
        if _lease_is_live(lease):
            state, why = "active", f"pid {lease['pid']} on this host still runs it"
        elif age < older_than_s:
            state, why = "active", f"moved {age:.0f}s ago"
        else:
            state, why = "abandoned", f"no activity for {age:.0f}s"
        runs.append(RunRef(name, "branch", commit, state, activity, age,
                           lakefs.uncommitted_count(repo, name), lease, why))
    for name, commit in sorted(lakefs.tags(repo, RUN_PREFIX).items()):
        activity = lakefs.commit_time(repo, name)
        age = now - activity
        into = _merged(lakefs, repo, name, others)
        if into:
            state, why = "merged", f"in {into}'s history: kept (lineage)"
        elif age < older_than_s:
            state, why = "active", f"unmerged, committed {age:.0f}s ago"
        else:
            state, why = "abandoned", f"unmerged for {age:.0f}s"
        runs.append(RunRef(name, "tag", commit, state, activity, age, why=why))
    return sorted(runs, key=lambda r: (r.last_activity, r.name, r.kind))


def gc_runs(lakefs: LakeFS, repo: str, older_than_s: float, dry_run: bool = False) -> dict:
    """Remove abandoned run branches and unmerged run tags; returns what was removed and kept."""
    runs = list_runs(lakefs, repo, older_than_s)
    removed, failed = [], []
    for run in runs:
        if run.state != "abandoned":
            continue
        if not dry_run:
            try:
                if run.kind == "branch":
                    lakefs.delete_branch(repo, run.name)
                else:
                    lakefs.delete_tag(repo, run.name)
            except DfpError as exc:
                failed.append({"name": run.name, "kind": run.kind, "error": str(exc)})
                continue
        removed.append({"name": run.name, "kind": run.kind, "commit_id": run.commit_id,
                        "uncommitted_objects": run.uncommitted_objects, "why": run.why})
    return {
        "repository": repo, "dry_run": dry_run, "older_than_s": older_than_s,
        "removed": removed, "failed": failed,
        "kept": [{"name": r.name, "kind": r.kind, "state": r.state, "why": r.why} for r in runs if r.state != "abandoned"],
    }
