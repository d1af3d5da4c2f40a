"""What the fault suites share: `dfp` as a user runs it, the target's fct rows, the check
that follows every fault (target unchanged or one complete merge; `dfp runs gc` leaves
no run ref), and stopping or restarting one service of the test stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from dfp_core import iceberg
from dfp_core.iceberg import TableRef
from dfp_core.kronodroid import schema
from dfp_spark.run_lease import LEASE_BRANCH, LEASES_PREFIX
from dfp_spark.run_refs import list_runs


def dfp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def fct_rows(spark, repo: str, ref: str) -> int:
    return spark.table(iceberg.qualified(spark, TableRef(repo, ref, schema.MART_NAMESPACE, schema.FCT_TABLE))).count()


def check_after(lakefs, spark, repo: str, before: str, run_branch: str, older_than: str = "0s") -> dict:
    """The target is unchanged or holds the run's complete merge; what gc then leaves (no run
    ref but merged tags, no lease)."""
    head = lakefs.resolve_commit(repo, "main")
    merged = head != before
    outcome = {"target": "merged completely" if merged else "unchanged", "partial_merge": False}
    if merged:  # the only other allowed state: the whole run, reconciled
        summary = json.loads(lakefs.read_bytes(repo, "main", schema.TRANSFORM_SUMMARY_PATH))
        outcome["partial_merge"] = not (summary["reconciled"] and lakefs.tag_exists(repo, run_branch)
                                        and fct_rows(spark, repo, head) == summary["fct_rows"])
    gc = dfp("runs", "gc", "--repo", repo, "--older-than", older_than)
    assert gc.returncode == 0, gc.stderr
    outcome["gc_removed"] = [f"{r['kind']} {r['name']}" for r in json.loads(gc.stdout.splitlines()[-1])["removed"]]
    left = [r for r in list_runs(lakefs, repo, 0) if r.state != "merged"]
    assert not left, f"gc left {[(r.name, r.kind, r.state) for r in left]}"
    if lakefs.branch_exists(repo, LEASE_BRANCH):
        assert lakefs.list_paths(repo, LEASE_BRANCH, LEASES_PREFIX) == [], "gc left a lease"
    return outcome


def stop(stack_settings, service_name: str) -> None:
    """Stop one service of the stack (its whole process group) on purpose: an outage that
    lasts until ``start``, which the stack's supervisor does not repair meanwhile."""
    from dfp_core import stack as stack_mod

    stack_mod.stop_service(stack_settings, service_name, log=lambda m: None)


def start(stack_settings) -> None:
    """Start whatever of the stack is not running."""
    from dfp_core import stack as stack_mod

    stack_mod.up(stack_settings, log=lambda m: None)


def restart(stack_settings, service_name: str, down_s: float) -> None:
    stop(stack_settings, service_name)
    time.sleep(down_s)
    start(stack_settings)
