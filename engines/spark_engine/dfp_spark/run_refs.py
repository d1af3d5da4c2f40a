"""Transform runs left behind, and their clean-up (`dfp runs list`, `dfp runs gc`).

A run works on a branch ``run-<id>``; publishing freezes it as a tag of the same name
and merges the tag. A run killed on the way leaves one of:
  - a run branch with uncommitted objects (killed during upload or the Spark write),
  - a run branch at an unmerged run commit (killed after the commit),
  - an unmerged run tag (killed between the freeze and the merge, or inside it).
Each also blocks retrying the same ``--run-id``.

Merged run tags are the lineage contract (Iceberg paths name them) and are never
removed. Every run holds a lease (``dfp_spark.run_lease``) from before its branch exists
to after its merge. A run is *abandoned* only when its owner is provably gone: its lease
names a process on this host that no longer runs, or nothing (no lease, a lease of
another host, a lease handed over between pipeline steps) moved for longer than
``older_than``. Otherwise it is *active*. The lease is read before the ref's state, so a
run that merges meanwhile is seen merged, not abandoned. No ref other than ``run-*``
branches and tags is ever touched. Deleting a branch drops its uncommitted objects from
every ref; their bytes are reclaimed by lakeFS's own garbage collection, as for any
deleted branch.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass

from dfp_core.errors import ConfigError, DfpError, RefNotFoundError
from dfp_core.lakefs_ops import LakeFS
from dfp_core.summary import Summary
from dfp_spark.run_lease import LEASE_BRANCH, LEASES_PREFIX, Lease, RunLease, read_lease
from dfp_spark.transform_run import RUN_PREFIX

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


def _judge(lease: Lease | None, ref_activity: float, now: float, older_than_s: float) -> tuple[str, str, float]:
    """(state, why, last activity) of an unmerged run from its lease and its ref's age."""
    activity = max(ref_activity, lease.updated_at if lease else 0.0)
    alive = lease.owner_alive() if lease else None
    if alive:
        return "active", f"pid {lease.pid} on this host still runs it ({lease.stage})", activity
    if alive is False:
        return "abandoned", f"its owner, pid {lease.pid} on this host, is gone ({lease.stage})", activity
    age = now - activity
    if age < older_than_s:
        return "active", f"moved {age:.0f}s ago" + (f" ({lease.stage})" if lease else ""), activity
    return "abandoned", f"no activity for {age:.0f}s" + (f" ({lease.stage})" if lease else ""), activity


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
    others = sorted(b for b in branches if not b.startswith(RUN_PREFIX) and b != LEASE_BRANCH)
    runs: list[RunRef] = []
    for name, commit in sorted((b, c) for b, c in branches.items() if b.startswith(RUN_PREFIX)):
        with contextlib.suppress(RefNotFoundError):  # a live run freezes or drops its ref while we look
            lease = read_lease(lakefs, repo, name)
            state, why, activity = _judge(lease, lakefs.commit_time(repo, name), now, older_than_s)
            runs.append(RunRef(name, "branch", commit, state, activity, now - activity,
                               lakefs.uncommitted_count(repo, name), lease.to_dict() if lease else None, why))
    for name, commit in sorted(lakefs.tags(repo, RUN_PREFIX).items()):
        with contextlib.suppress(RefNotFoundError):
            lease = read_lease(lakefs, repo, name)  # first: a run that merges after this read is seen merged below
            into = _merged(lakefs, repo, name, others)
            if into:
                state, why, activity = "merged", f"in {into}'s history: kept (lineage)", lakefs.commit_time(repo, name)
            else:
                state, why, activity = _judge(lease, lakefs.commit_time(repo, name), now, older_than_s)
                why = f"unmerged; {why}"
            runs.append(RunRef(name, "tag", commit, state, activity, now - activity,
                               lease=lease.to_dict() if lease else None, why=why))
    return sorted(runs, key=lambda r: (r.last_activity, r.name, r.kind))


def _remove(lakefs: LakeFS, repo: str, run: RunRef, others: list[str]) -> bool:
    """Delete an abandoned run ref, then its lease; False when the ref was gone meanwhile
    or its tag got merged after the listing (a run that finished)."""
    if run.kind == "branch":
        if not lakefs.delete_branch(repo, run.name):
            return False
    else:
        if not lakefs.tag_exists(repo, run.name) or _merged(lakefs, repo, run.name, others):
            return False
        lakefs.delete_tag(repo, run.name)
    lease = read_lease(lakefs, repo, run.name)
    if lease is not None and lease.to_dict() == run.lease:  # not a new run's of the same name
        RunLease(lakefs, repo, run.name).release()
    return True


def _stray_leases(lakefs: LakeFS, repo: str, refs: set[str], older_than_s: float, now: float) -> list[str]:
    """Leases of no unmerged run ref whose owner is gone: a run killed just before creating its
    branch, just after deleting it, or between its merge and the lease's release."""
    if not lakefs.branch_exists(repo, LEASE_BRANCH):
        return []
    stray = []
    for path in lakefs.list_paths(repo, LEASE_BRANCH, LEASES_PREFIX):
        run_ref = path.removeprefix(LEASES_PREFIX).removesuffix(".json")
        if run_ref in refs:
            continue
        lease = read_lease(lakefs, repo, run_ref)  # None: released since the listing
        if lease is not None and _judge(lease, 0.0, now, older_than_s)[0] == "abandoned":
            stray.append(run_ref)
    return stray


@dataclass(frozen=True)
class GcSummary(Summary):
    """What ``gc_runs`` removed (or would, with ``dry_run``), could not remove, and kept."""

    repository: str
    dry_run: bool
    older_than_s: float
    removed: list[dict]  # name, kind, commit_id, uncommitted_objects, why
    failed: list[dict]  # name, kind, error
    stray_leases_removed: list[str]
    kept: list[dict]  # name, kind, state, why


def gc_runs(lakefs: LakeFS, repo: str, older_than_s: float, dry_run: bool = False) -> GcSummary:
    """Remove abandoned run branches and unmerged run tags, and their leases; returns what
    was removed and kept."""
    now = time.time()
    runs = list_runs(lakefs, repo, older_than_s, now)
    others = sorted(b for b in lakefs.branches(repo) if not b.startswith(RUN_PREFIX) and b != LEASE_BRANCH)
    removed, failed = [], []
    for run in runs:
        if run.state != "abandoned":
            continue
        if not dry_run:
            try:
                if not _remove(lakefs, repo, run, others):
                    continue
            except DfpError as exc:
                failed.append({"name": run.name, "kind": run.kind, "error": str(exc)})
                continue
        removed.append({"name": run.name, "kind": run.kind, "commit_id": run.commit_id,
                        "uncommitted_objects": run.uncommitted_objects, "why": run.why})
    # A merged run's lease is stray too once its owner is gone (killed between the merge and the release).
    stray = _stray_leases(lakefs, repo, {r.name for r in runs if r.state != "merged"}, older_than_s, now)
    if not dry_run:
        for run_ref in stray:
            RunLease(lakefs, repo, run_ref).release()
    return GcSummary(
        repository=repo, dry_run=dry_run, older_than_s=older_than_s, removed=removed, failed=failed,
        stray_leases_removed=stray,
        kept=[{"name": r.name, "kind": r.kind, "state": r.state, "why": r.why} for r in runs if r.state != "abandoned"],
    )
