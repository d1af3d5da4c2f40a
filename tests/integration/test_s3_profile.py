"""The s3 profile, as deployments run lakeFS and MLflow: PostgreSQL holds the lakeFS KV
and the MLflow store, SeaweedFS holds lakeFS's objects and MLflow's artifacts.

Objects really land in the object store. The object store down (at the start of a
transform, in the middle of one, during the model's artifact upload), wrong
credentials and PostgreSQL down each end in one clear error line, leave the target
branch as it was and register no model version.

Runs in the s3 pass of `make test` (``DFP_TEST_STACK_PROFILE=s3``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dfp_core.stack import seaweedfs as seaweedfs_server
from tests.stack_faults import check_after, dfp, start, stop

pytestmark = pytest.mark.s3_profile

# A failed artifact upload is retried by MLflow's client for minutes by default; the
# faults here need the failure, not the patience.
FEW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@pytest.fixture(scope="module")
def s3(stack):
    env = stack["env"]
    endpoint = stack["status"]["services"]["seaweedfs"]["endpoint"]
    return seaweedfs_server.client(endpoint, env["DFP_S3_ACCESS_KEY_ID"], env["DFP_S3_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def merged_repo(lakefs, small_input) -> str:
    """A repository whose main holds one merged transform, made with the CLI."""
    repo = "s3p" + uuid.uuid4().hex[:8]
    result = dfp("transform", "--input", str(small_input), "--repo", repo, "--run-id", "first")
    assert result.returncode == 0, result.stderr[-3000:]
    return repo


@pytest.fixture
def services_back(stack):
    """Whatever a test stops is running again after it, for the next test."""
    yield
    start(stack["settings"])


def _objects(s3, bucket: str, prefix: str) -> list[dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj for page in pages for obj in page.get("Contents", [])]


def _one_error_line(stderr: str) -> str:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and len(last) < 1000, stderr[-3000:]
    return last


def _versions(name: str, tracking_uri: str) -> list:
    import mlflow

    return mlflow.MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'")


def _train(repo: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dfp_app.cli", "train", "--repo", repo, "--ref", "main", "--no-baselines",
         "--model-name", name, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **FEW_RETRIES},
    )


def test_repository_objects_and_model_artifacts_live_in_the_object_store(lakefs, merged_repo, s3, stack):
    namespace = lakefs.client.sdk_client.repositories_api.get_repository(merged_repo).storage_namespace
    assert namespace == f"s3://{seaweedfs_server.BUCKETS[0]}/{merged_repo}"
    stored = _objects(s3, seaweedfs_server.BUCKETS[0], f"{merged_repo}/")
    # The raw archives, the Avro data files and the Iceberg metadata: far more than a few bytes.
    assert len(stored) > 20 and sum(obj["Size"] for obj in stored) > 100_000
    assert not any((stack["settings"].home / "lakefs" / "data").glob(f"**/{merged_repo}*"))

    name = f"s3_profile_{merged_repo}"
    proc = _train(merged_repo, name, "--max-epochs", "1")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
    versions = _versions(name, stack["env"]["MLFLOW_TRACKING_URI"])
    assert [v.run_id for v in versions] == [run_id]
    artifacts = [obj["Key"] for obj in _objects(s3, seaweedfs_server.BUCKETS[1], "artifacts/")]
    assert any(run_id in key and key.endswith("/plots/roc_curve.png") for key in artifacts), artifacts[:20]
    # MLflow 3 keeps a logged model under its model id (the version's source), apart from the run.
    model_id = versions[0].source.removeprefix("models:/")
    assert any(f"/models/{model_id}/" in key and key.endswith("/MLmodel") for key in artifacts), artifacts[:40]


def test_mlflow_refuses_requests_without_the_stacks_credentials(stack, rt):
    """MLflow runs its basic-auth app in the s3 profile: nothing is read or written without the
    stack's user, not even the artifact store a tampered model would be PUT into."""
    import requests

    uri, env = stack["env"]["MLFLOW_TRACKING_URI"], stack["env"]
    user = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert stack["status"]["services"]["mlflow"]["basic_auth"] is True
    assert requests.get(f"{uri}/health", timeout=10).status_code == 200  # the health check stays open
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=(user[0], "not-the-password"), timeout=10).status_code == 401
    tampered = f"{uri}/api/2.0/mlflow-artifacts/artifacts/1/tampered/artifacts/python_model.pkl"
    assert requests.put(tampered, data=b"payload", timeout=10).status_code == 401
    assert requests.get(search, auth=user, timeout=10).status_code == 200
    # Our clients authenticate through the runtime context: the credentials are in no variable.
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert rt.mlflow.search_experiments() is not None


def test_object_store_down_at_the_start_of_a_transform(lakefs, spark, merged_repo, small_input, stack, services_back):
    before = lakefs.resolve_commit(merged_repo, "main")
    stop(stack["settings"], "seaweedfs")
    result = dfp("transform", "--input", str(small_input), "--repo", merged_repo, "--run-id", "store-down")
    start(stack["settings"])
    assert result.returncode != 0
    line = _one_error_line(result.stderr)
    assert "object store" in line, line
    outcome = check_after(lakefs, spark, merged_repo, before, "run-store-down")
    assert outcome["target"] == "unchanged"


def test_object_store_down_in_the_middle_of_a_transform(lakefs, spark, merged_repo, small_input, stack,
                                                        services_back):
    before = lakefs.resolve_commit(merged_repo, "main")
    proc = subprocess.Popen([sys.executable, "-m", "dfp_app.cli", "transform", "--input", str(small_input),
                             "--repo", merged_repo, "--run-id", "store-mid"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    deadline = time.monotonic() + 300
    while not lakefs.branch_exists(merged_repo, "run-store-mid") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # into the upload or the Spark job
    stop(stack["settings"], "seaweedfs")
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        start(stack["settings"])
    outcome = check_after(lakefs, spark, merged_repo, before, "run-store-mid")
    assert not outcome["partial_merge"]
    if proc.returncode == 0:  # the store came back before the retries ran out
        assert outcome["target"] == "merged completely"
    else:
        _one_error_line(err)
        assert outcome["target"] == "unchanged"


def test_object_store_down_during_the_model_upload(merged_repo, stack, services_back):
    import mlflow

    name = f"s3_upload_{merged_repo}"
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    proc = _train(merged_repo, name, "--max-epochs", "30")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="attributes.status = 'RUNNING'")
        if any(r.data.metrics for r in runs):  # past the data, fitting: the artifacts come next
            break
        time.sleep(1)
    stop(stack["settings"], "seaweedfs")
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        start(stack["settings"])
    assert proc.returncode != 0, out[-2000:]
    _one_error_line(err)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["status"] == "FAILED"
    assert client.get_run(last["run_id"]).info.status == "FAILED"
    assert _versions(name, stack["env"]["MLFLOW_TRACKING_URI"]) == []


def test_wrong_credentials_are_named_and_change_nothing(lakefs, spark, merged_repo, small_input, stack):
    before = lakefs.resolve_commit(merged_repo, "main")
    result = dfp("transform", "--input", str(small_input), "--repo", merged_repo, "--run-id", "bad-key",
                 env={"LAKEFS_SECRET_ACCESS_KEY": "not-the-secret-" + uuid.uuid4().hex})
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "rejected the credentials" in line and "LAKEFS_SECRET_ACCESS_KEY" in line
    assert lakefs.resolve_commit(merged_repo, "main") == before
    assert not lakefs.branch_exists(merged_repo, "run-bad-key")


def test_postgres_down_fails_transform_and_training_cleanly(lakefs, spark, merged_repo, small_input, stack,
                                                           services_back):
    before = lakefs.resolve_commit(merged_repo, "main")
    name = f"s3_pg_down_{merged_repo}"
    stop(stack["settings"], "postgres")
    try:
        transform = dfp("transform", "--input", str(small_input), "--repo", merged_repo, "--run-id", "pg-down")
        train = _train(merged_repo, name, "--max-epochs", "1")
        train_out, train_err = train.communicate(timeout=900)
    finally:
        start(stack["settings"])
    assert transform.returncode != 0
    _one_error_line(transform.stderr)
    assert train.returncode != 0
    _one_error_line(train_err)
    assert json.loads(train_out.strip().splitlines()[-1])["status"] == "FAILED"
    outcome = check_after(lakefs, spark, merged_repo, before, "run-pg-down")
    assert outcome["target"] == "unchanged"
    assert _versions(name, stack["env"]["MLFLOW_TRACKING_URI"]) == []


def test_up_status_down_and_reset_of_an_s3_home(tmp_path):
    import psutil

    from dfp_core.stack import postgres as postgres_server
    from dfp_core.settings import read_env_file
    from dfp_core.stack import free_port

    home = tmp_path / "home"
    env = {"DFP_HOME": str(home), **{key: str(free_port()) for key in
                                     ("DFP_LAKEFS_PORT", "DFP_MLFLOW_PORT", "DFP_POSTGRES_PORT", "DFP_S3_PORT",
                                      "DFP_LAKEFS_ACL_PORT")}}
    up = dfp("stack", "up", "--profile", "s3", "--json", env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    status = json.loads(up.stdout.strip().splitlines()[-1])
    assert status["profile"] == "s3"
    # By default the s3 profile runs lakeFS's ACL server, holding the pipeline's scoped user.
    assert set(status["services"]) == {"postgres", "seaweedfs", "lakefs-acl", "lakefs", "mlflow"}
    assert status["services"]["lakefs"]["pipeline_user"] == "dfp-pipeline"
    assert all(svc["healthy"] for svc in status["services"].values())
    pg_data = postgres_server.data_dir(home)
    assert (pg_data / "PG_VERSION").is_file()
    try:
        # The servers' secrets are in their environment, on no command line.
        secrets = [v for k, v in read_env_file(home / "stack.env").items() if "SECRET" in k or "PASSWORD" in k]
        procs = [psutil.Process(svc["pid"]) for svc in status["services"].values()]
        for proc in procs + [c for p in procs for c in p.children(recursive=True)]:
            assert not any(secret in " ".join(proc.cmdline()) for secret in secrets), proc.name()
        wrong = dfp("stack", "up", "--profile", "local", env=env)
        assert wrong.returncode == 2 and "holds a s3-profile stack, not local" in wrong.stderr.strip().splitlines()[-1]
    finally:
        down = dfp("stack", "down", env=env)
    assert down.returncode == 0, down.stderr[-2000:]
    _, alive = psutil.wait_procs(procs, timeout=20)
    assert not alive, alive
    after = json.loads(dfp("stack", "status", "--json", env=env).stdout.strip().splitlines()[-1])
    assert after["profile"] == "s3" and not any(svc["running"] for svc in after["services"].values())
    reset = dfp("stack", "reset", "--yes", env=env)
    assert reset.returncode == 0, reset.stderr[-2000:]
    assert not home.exists() and not pg_data.exists()


def _weed_without_its_volume_server(tmp_path, stack_settings) -> Path:
    """A ``SEAWEEDFS_BIN`` that starts the real weed as the stack asks, but with no volume
    server: its S3 gateway answers and makes buckets, with nowhere to write (as when one never
    joins its master, or its disk is under the reserve)."""
    from dfp_core.settings import REPO_ROOT

    weed = seaweedfs_server.binary(REPO_ROOT, stack_settings.cache, stack_settings.seaweedfs_bin)
    wrapper = tmp_path / "weed-without-volume"
    wrapper.write_text(f'#!/bin/sh\nexec {weed} "$@" -volume=false\n')
    wrapper.chmod(0o755)
    return wrapper


def test_an_object_store_that_cannot_store_is_refused_within_the_wait(tmp_path, stack_settings):
    """Each write probe is one bounded attempt: the refusal comes soon after the wait, not after
    SeaweedFS's own retries times boto's (121 s for one probe before)."""
    import signal

    from dfp_core.errors import StackError
    from dfp_core.stack import free_port

    identities = seaweedfs_server.write_identities(tmp_path, "dfp-probe-key", "dfp-probe-secret")
    s3_port, ports = free_port(), {name: free_port() for name in seaweedfs_server.INTERNAL_PORTS}
    weed = _weed_without_its_volume_server(tmp_path, stack_settings)
    cmd = seaweedfs_server.server_command(weed, tmp_path, "127.0.0.1", s3_port, ports, identities)
    log, endpoint = tmp_path / "seaweedfs.log", f"http://127.0.0.1:{s3_port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not seaweedfs_server.healthy(endpoint):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.25)
        started = time.monotonic()
        with pytest.raises(StackError) as refused:
            seaweedfs_server.ensure_buckets(endpoint, "dfp-probe-key", "dfp-probe-secret", wait_s=4)
        waited = time.monotonic() - started
        assert "answers but cannot store an object after 4s" in str(refused.value)
        assert waited < 60, waited  # one bounded attempt past the wait, not SeaweedFS's own retries times boto's
        s3 = seaweedfs_server.client(endpoint, "dfp-probe-key", "dfp-probe-secret")
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == set(seaweedfs_server.BUCKETS)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_an_object_store_that_cannot_store_is_refused_at_start(tmp_path, stack_settings):
    """`dfp stack up` on such a SeaweedFS fails in one line naming the cause and its log,
    instead of lakeFS failing every repository later with "failed to access storage"."""
    from dfp_core.stack import free_port, postgres as postgres_server

    home = tmp_path / "home"
    env = {"DFP_HOME": str(home), "SEAWEEDFS_BIN": str(_weed_without_its_volume_server(tmp_path, stack_settings)),
           **{key: str(free_port()) for key in ("DFP_LAKEFS_PORT", "DFP_MLFLOW_PORT", "DFP_POSTGRES_PORT",
                                                 "DFP_S3_PORT", "DFP_LAKEFS_ACL_PORT")}}
    try:
        up = dfp("stack", "up", "--profile", "s3", env=env)
    finally:
        dfp("stack", "down", env=env)
    try:
        last = up.stderr.strip().splitlines()[-1]
        assert up.returncode != 0 and last.startswith("error: "), up.stderr[-3000:]
        assert "answers but cannot store an object after 60s" in last, last
        assert last.endswith(f"[log: {home / 'logs' / 'seaweedfs.log'}]"), last
        import psutil

        left = [proc.pid for proc in psutil.process_iter(["cmdline"])
                if any(str(home) in arg for arg in proc.info["cmdline"] or ())]
        assert not left, left  # the refused server was stopped, and `stack down` stopped the rest
    finally:
        postgres_server.remove_data(home)  # as root the cluster lives outside tmp_path


def test_a_cluster_left_by_a_home_deleted_by_hand_is_made_afresh(tmp_path):
    """As root the cluster lives outside DFP_HOME, keyed by the home's path: a home deleted by
    hand and made again there must not meet the old cluster, which its new password cannot
    open (CI met exactly that). A home that still holds objects keeps its cluster: refused; and
    one whose cluster is gone is refused too, rather than given an empty one."""
    import shutil

    from dfp_core.errors import StackError
    from dfp_core.stack import postgres as pg
    from dfp_core.stack.ports import free_port

    try:
        bindir = pg.bin_dir()
    except StackError as exc:
        pytest.skip(str(exc))
    home = tmp_path / "home"
    home.mkdir()
    data = pg.init_cluster(home, bindir, "first-password")
    verifier = pg.stored_verifier(bindir, data)
    assert pg.scram_matches(verifier, "first-password") and not pg.scram_matches(verifier, "second-password")
    kept = data / "dfp-test-marker"
    kept.write_text("the first cluster")
    assert pg.init_cluster(home, bindir, "first-password") == data and kept.exists()
    (home / "seaweedfs").mkdir()  # the home holds objects: the cluster is its own
    with pytest.raises(StackError, match=r"does not accept the password in .*stack\.env"):
        pg.init_cluster(home, bindir, "second-password")
    assert kept.exists()
    shutil.move(data, tmp_path / "cluster-elsewhere")  # the home moved, say: its cluster is not found
    with pytest.raises(StackError, match=r"holds objects but its PostgreSQL cluster .* is missing"):
        pg.init_cluster(home, bindir, "first-password")
    assert not data.exists()
    shutil.move(tmp_path / "cluster-elsewhere", data)
    shutil.rmtree(home)
    home.mkdir()
    data = pg.init_cluster(home, bindir, "second-password")
    assert not kept.exists()
    port = free_port()
    server = subprocess.Popen(pg.server_command(bindir, data, "127.0.0.1", port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not pg.healthy(bindir, "127.0.0.1", port, "second-password") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pg.healthy(bindir, "127.0.0.1", port, "second-password")
    finally:
        server.terminate()
        server.wait(timeout=30)
        pg.remove_data(home)
