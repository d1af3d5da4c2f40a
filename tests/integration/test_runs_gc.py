"""`dfp runs list` and `dfp runs gc` on a real lakeFS: each kind of run a kill leaves
behind is found and removed; merged run tags, live runs and other refs are kept; the
same --run-id can be retried afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dfp_core.errors import LakeFSError
from dfp_core.kronodroid.generator import generate
from dfp_spark import transform_run
from dfp_spark.run_refs import list_runs, parse_duration


def _dfp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], capture_output=True, text=True, env=os.environ)


def _killed_during_upload(repo: str, run_id: str, input_dir) -> None:
    """A transform process that creates its run branch, uploads the inputs and is killed."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from dfp_core.runtime import Runtime
        from dfp_spark.transform_run import prepare_run
        rt = Runtime.from_env(os.environ)
        prepare_run(rt.lakefs, {repo!r}, "main", {run_id!r}, Path({str(input_dir)!r}))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _committed_run(lakefs, repo: str, name: str) -> str:
    lakefs.create_branch(repo, name, "main")
    lakefs.upload_bytes(repo, name, f"_dfp/{name}.txt", name.encode())
    return lakefs.commit(repo, name, f"run {name}")


def test_gc_removes_what_kills_leave_and_nothing_else(lakefs, repo, tmp_path):
    generate(tmp_path / "in", 40, seed=2)
    _killed_during_upload(repo, "killed-upload", tmp_path / "in")
    _committed_run(lakefs, repo, "run-killed-after-commit")  # killed before the freeze
    frozen = _committed_run(lakefs, repo, "run-killed-before-merge")
    lakefs.delete_branch(repo, "run-killed-before-merge")
    lakefs.create_tag(repo, "run-killed-before-merge", frozen)
    merged = _committed_run(lakefs, repo, "run-merged")
    lakefs.delete_branch(repo, "run-merged")
    lakefs.create_tag(repo, "run-merged", merged)
    lakefs.merge(repo, "run-merged", "main")
    live = transform_run.prepare_run(lakefs, repo, "main", "still-running", None)  # this process holds it
    lakefs.create_branch(repo, "feature-x", "main")
    lakefs.upload_bytes(repo, "feature-x", "notes.txt", b"not a run")
    lakefs.create_tag(repo, "v1-unmerged", lakefs.resolve_commit(repo, "run-killed-after-commit"))
    main_before = lakefs.resolve_commit(repo, "main")

    with pytest.raises(LakeFSError, match="already exists"):  # a leftover blocks the retry
        transform_run.prepare_run(lakefs, repo, "main", "killed-upload", None)

    states = {(r.name, r.kind): r for r in list_runs(lakefs, repo, parse_duration("24h"))}
    # Its lease names a process of this host that is gone: abandoned however recent.
    assert states[("run-killed-upload", "branch")].state == "abandoned"
    assert "is gone" in states[("run-killed-upload", "branch")].why
    assert states[("run-killed-upload", "branch")].uncommitted_objects >= 4  # the four archives
    assert states[("run-killed-after-commit", "branch")].state == "active"  # no lease, recent: may run elsewhere
    assert states[("run-merged", "tag")].state == "merged"
    assert states[(live.run_branch, "branch")].state == "active"

    dry = json.loads(_dfp("runs", "gc", "--repo", repo, "--older-than", "0s", "--dry-run").stdout.splitlines()[-1])
    assert {(r["name"], r["kind"]) for r in dry["removed"]} == {
        ("run-killed-upload", "branch"), ("run-killed-after-commit", "branch"), ("run-killed-before-merge", "tag")}
    assert lakefs.branch_exists(repo, "run-killed-upload")  # a dry run removes nothing

    result = _dfp("runs", "gc", "--repo", repo, "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert {(r["name"], r["kind"]) for r in summary["removed"]} == {(r["name"], r["kind"]) for r in dry["removed"]}
    assert {(r["name"], r["state"]) for r in summary["kept"]} == {("run-merged", "merged"), (live.run_branch, "active")}

    assert not lakefs.branch_exists(repo, "run-killed-upload") and not lakefs.branch_exists(repo, "run-killed-after-commit")
    assert not lakefs.tag_exists(repo, "run-killed-before-merge")
    assert lakefs.tag_exists(repo, "run-merged") and lakefs.branch_exists(repo, live.run_branch)
    assert lakefs.branch_exists(repo, "feature-x") and lakefs.tag_exists(repo, "v1-unmerged")
    assert lakefs.uncommitted_count(repo, "feature-x") == 1
    assert lakefs.resolve_commit(repo, "main") == main_before

    listed = json.loads(_dfp("runs", "list", "--repo", repo, "--older-than", "0s", "--json").stdout.splitlines()[-1])
    assert {r["state"] for r in listed["runs"]} == {"merged", "active"}
    retried = transform_run.prepare_run(lakefs, repo, "main", "killed-upload", tmp_path / "in")
    assert lakefs.branch_exists(repo, retried.run_branch)


def test_bad_duration_is_one_line(repo):
    result = _dfp("runs", "gc", "--repo", repo, "--older-than", "yesterday")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --older-than 'yesterday': expected a number and a unit, such as 30m, 24h or 7d"]


def test_gc_in_a_loop_never_touches_a_live_transform(lakefs, repo, small_input, report):
    """`runs gc --older-than 0s` over and over while one `dfp transform` runs from its branch's
    creation to its merge: gc removes nothing of it, and the run merges."""
    from dfp_spark.run_lease import LEASE_BRANCH, LEASES_PREFIX
    from dfp_spark.run_refs import gc_runs

    proc = subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "transform", "--input", str(small_input),
                             "--repo", repo, "--run-id", "gc-race"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    passes, seen, removed = 0, set(), []
    while proc.poll() is None:
        result = gc_runs(lakefs, repo, older_than_s=0)
        passes += 1
        removed += result.removed + [{"name": n} for n in result.stray_leases_removed]
        seen |= {(k["name"], k["state"]) for k in result.kept}
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.splitlines()[-1])
    assert removed == [], removed
    assert passes > 20 and ("run-gc-race", "active") in seen  # gc saw the run alive, many times over
    assert lakefs.is_merged_into(repo, "run-gc-race", "main")
    assert lakefs.resolve_commit(repo, "main") == summary["merge_commit"]
    assert lakefs.list_paths(repo, LEASE_BRANCH, LEASES_PREFIX) == []  # released after the merge
    assert gc_runs(lakefs, repo, older_than_s=0).removed == []
    report["faults"].append({"fault": "`runs gc --older-than 0s` in a loop through a live transform",
                             "gc_passes": passes, "removed_of_the_live_run": 0, "target": "merged completely",
                             "partial_merge": False, "rows_lost": 0})
