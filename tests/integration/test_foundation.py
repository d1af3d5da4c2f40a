"""Issue: foundation. A real lakeFS + Spark/Iceberg round trip, and the stack's
process management."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from dfp_core import iceberg, stack as stack_mod
from dfp_core.errors import ReadOnlyRefError
from dfp_core.iceberg import TableRef


def _rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_iceberg_table_roundtrip_through_lakefs(spark, lakefs, repo):
    lakefs.create_branch(repo, "writer", "main")
    df = spark.createDataFrame(
        [(i, f"app{i}", i * 1.5, i % 2) for i in range(200)], "id long, name string, score double, label int"
    )
    table = TableRef(repo, "writer", "ns", "roundtrip")
    snapshot = iceberg.write_table(spark, lakefs, df, table)
    commit = lakefs.commit(repo, "writer", "write roundtrip", {"purpose": "test"})
    merge_commit = lakefs.merge(repo, "writer", "main")
    assert merge_commit != commit and len(merge_commit) == 64

    at_merge = TableRef(repo, merge_commit, "ns", "roundtrip")
    read_back = spark.table(iceberg.qualified(spark, at_merge))
    assert _rows(read_back) == _rows(df)
    assert iceberg.current_snapshot_id(spark, at_merge) == snapshot
    assert iceberg.table_properties(spark, at_merge)["write.format.default"] == "avro"

    files = iceberg.data_file_paths(spark, at_merge)
    assert files and all(f.endswith(".avro") for f in files)
    stored = [p for p in lakefs.list_paths(repo, merge_commit, "iceberg/ns/roundtrip/data/") if not p.endswith("/")]
    assert stored and all(p.endswith(".avro") for p in stored)
    assert lakefs.commit_metadata(repo, commit)["purpose"] == "test"


def test_write_at_commit_id_is_refused_with_clear_error(spark, lakefs, repo):
    commit = lakefs.resolve_commit(repo, "main")
    df = spark.createDataFrame([(1,)], "id int")
    with pytest.raises(ReadOnlyRefError, match="it is a commit, and lakeFS accepts writes only on branches"):
        iceberg.write_table(spark, lakefs, df, TableRef(repo, commit, "ns", "t"))


def test_unknown_ref_is_reported(lakefs, repo):
    from dfp_core.errors import RefNotFoundError

    with pytest.raises(RefNotFoundError, match="no-such-branch"):
        lakefs.resolve_commit(repo, "no-such-branch")


def test_stack_up_is_idempotent_and_status_reports_it(stack):
    settings = stack["settings"]
    before = stack_mod.status(settings)
    again = stack_mod.up(settings, log=lambda m: None)
    for name in ("lakefs", "mlflow"):
        assert again["services"][name]["pid"] == before["services"][name]["pid"]
        assert again["services"][name]["healthy"]
    out = subprocess.run(
        [sys.executable, "-m", "dfp_app.cli", "stack", "status", "--json"],
        capture_output=True, text=True, check=True, env={**stack["env"], "PATH": "/usr/bin:/bin"},
    )
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status["credentials_file"].endswith("stack.env")
    assert status["services"]["lakefs"]["pid"] == before["services"]["lakefs"]["pid"]
    mode = (settings.home / "stack.env").stat().st_mode & 0o777
    assert mode == 0o600
    key_id = (settings.home / "stack.env").read_text().split("LAKEFS_ACCESS_KEY_ID=")[1].split()[0]
    assert len(key_id) <= 20


def test_stack_down_then_up_in_a_separate_home(tmp_path):
    """A second, independent stack: down stops every process it started."""
    from dfp_core.stack import free_port
    from dfp_core.settings import StackSettings

    settings = StackSettings(home=tmp_path / "home", lakefs_port=free_port(), mlflow_port=free_port())
    status = stack_mod.up(settings, log=lambda m: None)
    pids = [status["services"][n]["pid"] for n in ("lakefs", "mlflow")]
    procs = [psutil.Process(p) for p in pids]
    children = [c for p in procs for c in p.children(recursive=True)]
    stack_mod.down(settings, log=lambda m: None)
    gone, alive = psutil.wait_procs(procs + children, timeout=10)
    assert not alive, f"still running: {alive}"
    assert (settings.home / "lakefs" / "metadata").is_dir(), "data must be kept"
    assert stack_mod.status(settings)["services"]["lakefs"]["running"] is False


def test_a_killed_leader_leaves_no_server_behind(tmp_path):
    """`kill -9` of the MLflow pid in state.json: its workers keep the port. status names
    them, up stops them and starts again, down stops the whole process group."""
    import os
    import signal

    from dfp_core.stack import free_port
    from dfp_core.settings import StackSettings

    settings = StackSettings(home=tmp_path / "home", lakefs_port=free_port(), mlflow_port=free_port())
    first = stack_mod.up(settings, log=lambda m: None)
    leader = psutil.Process(first["services"]["mlflow"]["pid"])
    workers = leader.children(recursive=True)
    assert workers, "the MLflow server runs its app in worker processes"
    os.kill(leader.pid, signal.SIGKILL)
    psutil.wait_procs([leader], timeout=10)
    try:
        broken = stack_mod.status(settings)["services"]["mlflow"]
        assert broken["running"] is False
        assert set(broken["orphaned_pids"]) >= {w.pid for w in workers if w.is_running()}
        again = stack_mod.up(settings, log=lambda m: None)
        assert again["services"]["mlflow"]["healthy"] and again["services"]["mlflow"]["pid"] != leader.pid
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers of the killed leader still run: {alive}"
    finally:
        group = [p for rec in stack_mod.StackState(settings.home).load().values() for p in rec.group()]
        stack_mod.down(settings, log=lambda m: None)
    _, alive = psutil.wait_procs(group, timeout=10)
    assert not alive and "orphaned_pids" not in stack_mod.status(settings)["services"]["mlflow"]


def test_a_server_left_starting_is_awaited_by_the_first_command_that_tracks(tmp_path):
    """`up(ready_later=("mlflow",))` returns once lakeFS is healthy, MLflow's process started
    and recorded; a runtime of that home waits for it in `tracking()` before its check."""
    from dfp_core.errors import StackError
    from dfp_core.runtime import Runtime
    from dfp_core.settings import StackSettings
    from dfp_core.stack import free_port

    settings = StackSettings(home=tmp_path / "home", lakefs_port=free_port(), mlflow_port=free_port())
    with pytest.raises(StackError, match="only the last services in start order"):
        stack_mod.up(settings, log=lambda m: None, ready_later=("lakefs",))
    said: list[str] = []
    try:
        status = stack_mod.up(settings, log=said.append, ready_later=("mlflow",))
        assert status["services"]["lakefs"]["healthy"]
        assert status["services"]["mlflow"]["running"], status["services"]["mlflow"]
        assert any(line.startswith("mlflow: starting at") for line in said), said
        pid = status["services"]["mlflow"]["pid"]
        assert stack_mod.up(settings, log=said.append, ready_later=("mlflow",))["services"]["mlflow"]["pid"] == pid
        env = {"DFP_HOME": str(settings.home), "DFP_LAKEFS_PORT": str(settings.lakefs_port),
               "DFP_MLFLOW_PORT": str(settings.mlflow_port)}
        with Runtime.from_env(env) as rt, rt.tracking() as client:
            assert client.search_experiments()  # answered: the server is up, with its login
        assert stack_mod.status(settings)["services"]["mlflow"]["healthy"]
    finally:
        stack_mod.down(settings, log=lambda m: None)
    # Nothing recorded as running: nothing to wait for (the command's own check then speaks).
    stack_mod.await_service(settings, "mlflow", status["services"]["mlflow"]["endpoint"], log=said.append)


def test_up_waits_for_a_server_an_earlier_up_left_starting_instead_of_restarting_it(tmp_path):
    from dfp_core.settings import StackSettings
    from dfp_core.stack import free_port

    settings = StackSettings(home=tmp_path / "home", lakefs_port=free_port(), mlflow_port=free_port())
    try:
        first = stack_mod.up(settings, log=lambda m: None, ready_later=("mlflow",))
        said: list[str] = []
        again = stack_mod.up(settings, log=said.append)
        assert again["services"]["mlflow"]["healthy"], again["services"]["mlflow"]
        assert again["services"]["mlflow"]["pid"] == first["services"]["mlflow"]["pid"], said
        assert not any("restarting" in line for line in said), said
    finally:
        stack_mod.down(settings, log=lambda m: None)
