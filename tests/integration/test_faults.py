"""Fault injection on the real stack: `dfp transform` killed (SIGKILL) at each phase, lakeFS
and MLflow restarted under a transform and a training run, two transforms on one target at
once, and the bad-input kinds. After every fault: the target holds either what it held or
one complete merge, `dfp runs gc` leaves no run ref behind, nothing is lost, and the next
run merges.

The module writes a report (``build/fault_report.json``; figures in bench/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from dfp_core import faults
from dfp_core.errors import DfpError
from dfp_core.kronodroid import schema
from dfp_core.kronodroid.generator import generate
from dfp_spark.run_refs import list_runs
from tests.inputs import archive_rows, csv_text
from tests.stack_faults import check_after, dfp, fct_rows, restart

@pytest.fixture(scope="module")
def fault_repo(lakefs) -> str:
    import uuid

    name = "faults" + uuid.uuid4().hex[:8]
    lakefs.ensure_repository(name)
    return name


# The pipeline's commit-merge step: it takes the run's lease, then commits, freezes and merges.
PUBLISH = """
import os, sys
from dfp_core.runtime import Runtime
from dfp_spark.run_lease import RunLease
from dfp_spark.transform_run import publish_run
lakefs = Runtime.from_env(os.environ).lakefs
RunLease(lakefs, sys.argv[1], sys.argv[2]).acquire("commit, freeze and merge")
publish_run(lakefs, sys.argv[1], sys.argv[2], "main")
"""


def _killed_run(transform, repo: str, run_id: str, small_input: Path, phase: str) -> subprocess.CompletedProcess:
    """`dfp transform` killed at ``phase``. The publish phases run as the pipeline runs them:
    the tables written on the run branch first (here in this process's Spark session, to
    spare a JVM start), then commit + freeze + merge in a process of its own, which is killed."""
    if phase in ("upload", "spark-write"):
        return dfp("transform", "--input", str(small_input), "--repo", repo, "--run-id", run_id,
                    env={faults.ENV: phase})
    transform(input_dir=small_input, repo=repo, run_id=run_id, merge=False)
    return subprocess.run([sys.executable, "-c", PUBLISH, repo, f"run-{run_id}"], capture_output=True, text=True,
                          env={**os.environ, faults.ENV: phase})


def test_a_transform_killed_at_each_phase_loses_nothing(transform, lakefs, spark, fault_repo, small_input, report):
    """One run id, killed at each phase in turn: each retry after gc gets past the phase
    the one before it died in, and a last run merges."""
    repo, run_id = fault_repo, "killed"
    for phase in faults.PHASES:
        before = lakefs.resolve_commit(repo, "main")
        killed = _killed_run(transform, repo, run_id, small_input, phase)
        assert killed.returncode == -9, (phase, killed.stderr[-3000:])
        # gc's default window: the lease names a process of this host that is gone, which is proof enough.
        outcome = check_after(lakefs, spark, repo, before, f"run-{run_id}", older_than="24h")
        assert not outcome["partial_merge"], phase
        if phase != "inside-merge":  # a kill inside the merge may land after lakeFS applied it
            assert outcome["target"] == "unchanged", phase
        if phase not in ("inside-merge", "between-delete-and-tag"):  # then no run ref is left at all
            assert outcome["gc_removed"], f"the kill at {phase} must have left something for gc"
        report["faults"].append({"fault": f"SIGKILL at {phase}", **outcome, "rows_lost": 0})
        if outcome["target"] == "merged completely":  # the run id is the merged run's for ever
            run_id = "after-kills"
    final = dfp("transform", "--input", str(small_input), "--repo", repo, "--run-id", run_id)
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(final.stdout.splitlines()[-1])
    lost = summary["rows_given"] - (summary["fct_rows"] + summary["quarantined_rows"] + summary["duplicates_dropped"])
    assert summary["reconciled"] and lost == 0
    assert fct_rows(spark, repo, summary["merge_commit"]) == summary["fct_rows"]
    assert [r.name for r in list_runs(lakefs, repo, 0) if r.state != "merged"] == []
    report["faults"].append({"fault": "the run after five kills", "target": "merged completely",
                             "partial_merge": False, "rows_lost": lost, "run_id": run_id})


def test_lakefs_restarted_under_a_transform(lakefs, spark, repo, small_input, stack, report):
    before = lakefs.resolve_commit(repo, "main")
    proc = subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "transform", "--input", str(small_input),
                             "--repo", repo, "--run-id", "lakefs-restart"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    deadline = time.monotonic() + 300
    while not lakefs.branch_exists(repo, "run-lakefs-restart") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # into the upload or the Spark job
    restart(stack["settings"], "lakefs", down_s=2)
    out, err = proc.communicate(timeout=600)
    outcome = check_after(lakefs, spark, repo, before, "run-lakefs-restart")
    assert not outcome["partial_merge"]
    if proc.returncode == 0:
        assert outcome["target"] == "merged completely"
    else:  # a clean failure: one line, target unchanged
        assert outcome["target"] == "unchanged" and err.strip().splitlines()[-1].startswith("error: ")
    report["faults"].append({"fault": "lakeFS restarted mid-transform (down 2 s)", **outcome, "rows_lost": 0,
                             "transform": "finished" if proc.returncode == 0 else err.strip().splitlines()[-1][:300]})


def test_two_transforms_on_one_target_at_once(lakefs, spark, repo, small_input, report):
    before = lakefs.resolve_commit(repo, "main")
    procs = [subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "transform", "--input", str(small_input),
                               "--repo", repo, "--run-id", f"concurrent-{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ) for i in (1, 2)]
    results = [(p, *p.communicate(timeout=900)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes[0] == 0, [err[-2000:] for _, _, err in results]
    head = lakefs.resolve_commit(repo, "main")
    summary = json.loads(lakefs.read_bytes(repo, "main", schema.TRANSFORM_SUMMARY_PATH))
    assert fct_rows(spark, repo, head) == summary["fct_rows"] and summary["reconciled"]
    if codes == [0, 2]:  # the second merge conflicts: main holds the first run whole
        loser = next(err for p, _, err in results if p.returncode == 2)
        assert "conflict" in loser.strip().splitlines()[-1]
    outcome = check_after(lakefs, spark, repo, before, f"run-{summary['run_id']}")
    report["faults"].append({"fault": "two transforms on one target at once", **outcome, "rows_lost": 0,
                             "exit_codes": codes})


def test_mlflow_restarted_under_a_training_run(fault_repo, stack, report):
    import mlflow

    from dfp_core import lineage

    repo = fault_repo  # main holds the run merged after the kills
    name = f"kronodroid_autoencoder_{repo}"
    proc = subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "train", "--repo", repo, "--ref", "main",
                             "--max-epochs", "30", "--no-baselines", "--model-name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="attributes.status = 'RUNNING'")
        if any(r.data.metrics for r in runs):  # the fit is logging epochs
            break
        time.sleep(1)
    restart(stack["settings"], "mlflow", down_s=1)
    out, err = proc.communicate(timeout=900)
    last = json.loads(out.strip().splitlines()[-1])
    versions = client.search_model_versions(f"name = '{name}'")
    if proc.returncode == 0:
        assert [v.version for v in versions] == [last["model_version"]]
        assert set(lineage.LINEAGE_TAGS) <= set(versions[0].tags)
    else:
        assert last["status"] == "FAILED" and versions == []
        assert client.get_run(last["run_id"]).info.status == "FAILED"
        assert err.strip().splitlines()[-1].startswith("error: ")
    report["faults"].append({"fault": "MLflow restarted mid-training", "partial_merge": False, "rows_lost": 0,
                             "training": "finished and registered" if proc.returncode == 0 else "FAILED, no version",
                             "half_registered_versions": 0})


def test_a_server_that_dies_is_restarted_by_the_supervisor(stack, lakefs, repo, report):
    """kill -9 of lakeFS (its whole process group, as the kernel's OOM killer or a SIGBUS
    leaves it): the stack's supervisor starts it again, `dfp stack status` counts the restart,
    and the data is all there."""
    import signal as signals

    from dfp_core import stack as stack_mod

    head = lakefs.resolve_commit(repo, "main")
    before = json.loads(dfp("stack", "status", "--json").stdout.splitlines()[-1])["services"]["lakefs"]
    assert json.loads(dfp("stack", "status", "--json").stdout.splitlines()[-1])["supervisor"]["running"]
    os.killpg(before["pid"], signals.SIGKILL)
    started, after = time.monotonic(), before
    while time.monotonic() - started < 120:
        after = stack_mod.status(stack["settings"])["services"]["lakefs"]
        if after["healthy"] and after["restarts"] > before["restarts"]:
            break
        time.sleep(0.5)
    back = round(time.monotonic() - started, 1)
    assert after["healthy"] and after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"], after
    assert lakefs.resolve_commit(repo, "main") == head
    shown = dfp("stack", "status")
    assert "restarted 1x by the supervisor" in shown.stderr or f"restarted {after['restarts']}x" in shown.stderr
    report["faults"].append({"fault": "lakeFS killed (SIGKILL to its process group)", "target": "unchanged",
                             "partial_merge": False, "rows_lost": 0, "back_after_s": back,
                             "restarted_by": "the stack's supervisor, no manual step"})


# -- a full disk ----------------------------------------------------------------------


@contextlib.contextmanager
def _stack_on_a_small_disk(where: Path, size_mb: int):
    """A private stack whose DFP_HOME is a tmpfs of ``size_mb`` (root only)."""
    from dfp_core import stack as stack_mod
    from dfp_core.settings import StackSettings
    from dfp_core.stack import free_port

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        settings = StackSettings(home=where / "home", lakefs_port=free_port(), mlflow_port=free_port(), lakefs_acl=False)
        with stack_mod.running(settings, log=lambda m: None) as running:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "MLFLOW_", "DFP_"))}
            yield settings, {**env, **running["env"]}
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """Write zeros under ``folder`` until its filesystem is full."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_under_dfp_home_refuses_early_or_fails_safely(tmp_path, report):
    """On a stack whose DFP_HOME is a small disk: an input bigger than the free space is
    refused before anything is written. Then the disk fills while a transform writes: the
    run fails in one line and main is as it was; once space is freed the stack answers again
    with no manual step (the supervisor restarts a server the full disk killed), gc clears
    what the failed run could not, and the next transform merges."""
    import requests

    from dfp_core.lakefs_ops import LakeFS
    from dfp_core.settings import LakeFSSettings, read_env_file

    generate(tmp_path / "big", 20000, seed=5)  # ~4 MB of archives: ~40 MB under DFP_HOME, 48 MB asked
    generate(tmp_path / "in", 1500, seed=6)
    with _stack_on_a_small_disk(tmp_path / "disk", 32) as (settings, env):
        done = dfp("transform", "--input", str(tmp_path / "big"), "--repo", "full", "--run-id", "too-big", env=env)
        refused = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and refused.startswith("error: not enough free disk for this transform: "), refused
        assert "DFP_HOME" in refused and "nothing was written" in refused
        creds = read_env_file(settings.env_file)
        lakefs = LakeFS(LakeFSSettings(endpoint=settings.lakefs_endpoint, access_key_id=creds["LAKEFS_ACCESS_KEY_ID"],
                                       secret_access_key=creds["LAKEFS_SECRET_ACCESS_KEY"]))
        assert not lakefs.repository_exists("full")
        lakefs.ensure_repository("full")
        before = lakefs.resolve_commit("full", "main")
        proc = subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "transform", "--input", str(tmp_path / "in"),
                                 "--repo", "full", "--run-id", "filled"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        deadline = time.monotonic() + 300
        while not lakefs.branch_exists("full", "run-filled") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        filler = _fill(settings.home)
        try:
            out, err = proc.communicate(timeout=900)
        finally:
            filler.unlink()
        last = err.strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith("error: "), err[-3000:]  # one line, no Java stack
        deadline, healthy = time.monotonic() + 180, False
        while time.monotonic() < deadline and not healthy:  # no `dfp stack up`: the supervisor's job
            try:
                healthy = requests.get(f"{settings.lakefs_endpoint}/api/v1/healthcheck", timeout=2).status_code == 204
            except requests.RequestException:
                time.sleep(1)
        assert healthy, "lakeFS did not answer again after the disk was freed"
        restarts = json.loads(dfp("stack", "status", "--json", env=env).stdout.splitlines()[-1])["services"]["lakefs"]["restarts"]
        assert lakefs.resolve_commit("full", "main") == before
        gc = dfp("runs", "gc", "--repo", "full", env=env)  # a branch the failed run could not delete: its owner is gone
        assert gc.returncode == 0, gc.stderr[-2000:]
        assert not lakefs.branch_exists("full", "run-filled")
        again = dfp("transform", "--input", str(tmp_path / "in"), "--repo", "full", "--run-id", "after", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads(again.stdout.splitlines()[-1])["merge_commit"] == lakefs.resolve_commit("full", "main")
    report["faults"].append({"fault": "input bigger than the free disk under DFP_HOME", "target": "unchanged",
                             "partial_merge": False, "rows_lost": 0, "transform": refused[:240]})
    report["faults"].append({"fault": "disk under DFP_HOME filled mid-transform", "target": "unchanged",
                             "partial_merge": False, "rows_lost": 0, "lakefs_restarts_by_supervisor": restarts,
                             "transform": last[:240], "next_transform": "merged"})


# -- bad input ------------------------------------------------------------------------


def _member_rewrite(src: Path, out: Path, edit, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A copy of the generated input whose real-device malware member went through ``edit(rows)``."""
    shutil.copytree(src, out)
    target = out / "real_device" / "real_malware_v1.zip"
    name, rows = archive_rows(target)
    result = edit(rows)
    with zipfile.ZipFile(target, "w", compression) as zf:
        zf.writestr(name, result if isinstance(result, (str, bytes)) else csv_text(result))
    return out


def _refusals(src: Path, tmp: Path) -> dict[str, Path]:
    """Inputs refused before anything is written, by kind."""
    def col(rows, c):
        return rows[0].index(c)

    kinds: dict[str, Path] = {}
    kinds["missing required column"] = _member_rewrite(src, tmp / "a", lambda r: [row[:col(r, schema.SHA256)] + row[col(r, schema.SHA256) + 1:] for row in r])
    kinds["duplicate column names"] = _member_rewrite(src, tmp / "b", lambda r: [row + [row[1]] for row in r])
    kinds["header only, no data rows"] = _member_rewrite(src, tmp / "c", lambda r: r[:1])
    kinds["cell over 8 MiB"] = _member_rewrite(src, tmp / "d", lambda r: [r[0], [*r[1][:-1], "x" * (9 << 20)], *r[2:]],
                                                 zipfile.ZIP_STORED)
    kinds["zip bomb (expansion over 100x)"] = _member_rewrite(src, tmp / "e", lambda r: [r[0], [*r[1][:-1], "a" * 5_000_000], *r[2:]])
    for key, make in {
        "corrupt zip": lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"),
        "empty zip": lambda p: zipfile.ZipFile(p, "w").close(),
    }.items():
        folder = tmp / key.replace(" ", "_")
        shutil.copytree(src, folder)
        make(folder / "real_device" / "real_malware_v1.zip")
        kinds[key] = folder
    for key, (member, data) in {
        "zip member that is not a CSV": ("notes.txt", b"hello"),
        "zip member with an unsafe path": ("../escape.csv", b"a,b\n1,2\n"),
        "empty zip member": ("empty.csv", b""),
    }.items():
        folder = tmp / key.replace(" ", "_")
        shutil.copytree(src, folder)
        with zipfile.ZipFile(folder / "real_device" / "real_malware_v1.zip", "a") as zf:
            zf.writestr(member, data)
        kinds[key] = folder
    folder = tmp / "unknown_file"
    shutil.copytree(src, folder)
    (folder / "real_device" / "mystery.bin").write_bytes(b"\x00")
    kinds["unknown input file"] = folder
    folder = tmp / "link"
    shutil.copytree(src, folder)
    (tmp / "outside.csv").write_text("secret\n")
    (folder / "real_device" / "real_extra.csv").symlink_to(tmp / "outside.csv")
    kinds["symlink leading outside the input"] = folder
    (tmp / "empty_dir").mkdir()
    kinds["empty input folder"] = tmp / "empty_dir"
    kinds["input folder that does not exist"] = tmp / "nowhere"
    folder = tmp / "zero_bytes"
    folder.mkdir()
    (folder / "real_device").mkdir()
    (folder / "real_device" / "real_sample.csv").write_bytes(b"")
    kinds["zero-byte CSV"] = folder
    return kinds


def test_bad_inputs_are_refused_or_quarantined_never_lost(transform, lakefs, spark, repo, small_input, tmp_path, report):
    from dfp_core.params import TransformConfig  # noqa: F401 - the CLI's own config is what runs

    before = lakefs.resolve_commit(repo, "main")
    for i, (kind, path) in enumerate(_refusals(small_input, tmp_path).items()):
        with pytest.raises(DfpError) as refused:
            transform(input_dir=path, repo=repo, run_id=f"bad-{i}")
        message = str(refused.value)
        assert "\n" not in message
        assert lakefs.resolve_commit(repo, "main") == before and not lakefs.branch_exists(repo, f"run-bad-{i}")
        report["bad_inputs"].append({"kind": kind, "outcome": f"refused before any write: {message[:240]}"})

    # Row-level kinds in one run: each row quarantined with its reason, every row accounted for.
    def edit(rows):
        idx = {c: i for i, c in enumerate(rows[0])}
        body = [list(r) for r in rows[1:]]
        body[0][idx["read"]] = "lots"
        body[1][idx["write"]] = "-5"
        body[2][idx["read"]] = "9" * 1_000_000
        body[3][idx["INTERNET"]] = ""
        body[4][idx["HighestModDate"]] = "31/02/2019x"
        body[5].append("surplus")
        body[6][idx[schema.PACKAGE]] = "com.NOT_UTF8.app"
        body[7][idx[schema.LABEL]] = "7"
        body[8][idx[schema.SHA256]] = "not-a-hash"
        body[9][idx[schema.LABEL]] = "0"  # benign in the malware archive
        body.append(list(body[10]))  # an exact duplicate: dropped, counted
        changed = list(body[11])
        changed[idx["read"]] = str(int(changed[idx["read"]]) + 1)
        body.append(changed)  # same sample, different values
        return csv_text([rows[0], *body]).encode().replace(b"NOT_UTF8", b"\xff\xfe")

    expected = {
        "non_numeric_feature": "non-numeric count", "negative_count": "negative count",
        "count_out_of_range": "a 1 MB digit string as a count", "missing_feature_value": "empty count cell",
        "unparsable_date": "unparsable date", "malformed_row": "row with more cells than the header",
        "invalid_utf8": "text that is not UTF-8", "invalid_label": "label that is not 0 or 1",
        "invalid_sha256": "malformed sha256", "label_archive_mismatch": "benign row in the malware archive",
        "duplicate_sample_id": "same sample, different values",
    }
    summary = transform(input_dir=_member_rewrite(small_input, tmp_path / "rows", edit), repo=repo, run_id="bad-rows")
    got = summary["quarantine_by_reason"]
    assert {k: got.get(k, 0) for k in expected} == {k: 1 for k in expected}
    assert summary["duplicates_dropped"] >= 1 and summary["reconciled"]
    assert summary["fct_rows"] + summary["quarantined_rows"] + summary["duplicates_dropped"] == summary["rows_given"]
    for reason, kind in expected.items():
        report["bad_inputs"].append({"kind": kind, "outcome": f"quarantined as {reason}"})
    report["bad_inputs"].append({"kind": "exact duplicate row", "outcome": "dropped once, counted in duplicates_dropped"})
    report["bad_inputs"].append({"kind": "sha256 with both labels", "outcome": f"quarantined as conflicting_label ({got.get('conflicting_label', 0)} rows)"})

    shrunk = _member_rewrite(small_input, tmp_path / "shrunk", lambda r: r[:3])
    for f in (shrunk / "emulator").iterdir():
        f.unlink()
    head = lakefs.resolve_commit(repo, "main")
    with pytest.raises(DfpError, match="would shrink"):
        transform(input_dir=shrunk, repo=repo, run_id="bad-shrink")
    assert lakefs.resolve_commit(repo, "main") == head
    report["bad_inputs"].append({"kind": "input that would shrink the fct table by more than 20%",
                                 "outcome": "stopped before the merge; --allow-shrink to accept"})
    assert len(report["bad_inputs"]) >= 20


def test_the_report_totals(report):
    """Runs last in this module: the whole suite's figures."""
    assert report["faults"], "the fault tests ran first"
    assert sum(1 for f in report["faults"] if f.get("partial_merge")) == 0
    assert sum(f.get("rows_lost", 0) for f in report["faults"]) == 0
