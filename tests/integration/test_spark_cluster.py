"""The transform and the Feast retrieval on a real Spark standalone cluster: a master and two
workers started from the pyspark distribution on this machine, `SPARK_MASTER=spark://...`.
The executors get the Iceberg and S3A jars from the driver (each worker's work folder holds
them) and reach lakeFS through the S3 gateway; nothing is read from the driver's files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from dfp_core.stack import free_port
from tests.inputs import only_dfp_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKERS = 2


def _json(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    base = tmp_path_factory.mktemp("spark-cluster")
    env = {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base)}
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    spark_class = str(spark_home / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    processes = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(ui)],
                                  env=env, cwd=base, stdout=open(base / "master.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)]
    workers = []
    try:
        for i in range(WORKERS):
            worker_ui, work = free_port(), base / f"work{i}"
            processes.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "2g", "--webui-port", str(worker_ui), "--work-dir", str(work)],
                env=env, cwd=base, stdout=open(base / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
            workers.append({"ui": worker_ui, "work": work})
        deadline = time.monotonic() + 120
        while True:
            try:
                alive = [w for w in _json(ui)["workers"] if w["state"] == "ALIVE"]
            except OSError:
                alive = []
            if len(alive) == WORKERS:
                break
            assert time.monotonic() < deadline, (base / "master.log").read_text()[-3000:]
            time.sleep(1)
        yield {"master": master, "ui": ui, "workers": workers}
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            process.wait(timeout=60)


def test_the_transform_and_the_feast_retrieval_run_on_a_standalone_cluster(cluster, stack, rt, tmp_path):
    env = {**only_dfp_home(stack), "SPARK_MASTER": cluster["master"]}

    def dfp(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "dfp_core.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"dfp {' '.join(args)}:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    repo, data = "clu" + uuid.uuid4().hex[:8], tmp_path / "data"
    model = f"kronodroid_autoencoder_{repo}"
    dfp("generate", "--out", str(data), "--rows", "600", "--seed", "3")
    transformed = dfp("transform", "--input", str(data), "--repo", repo, "--run-id", "cluster")
    assert rt.lakefs.resolve_commit(repo, "main") == transformed["merge_commit"]
    assert 0 < transformed["fct_rows"] <= 600
    trained = dfp("train", "--repo", repo, "--max-epochs", "1", "--hidden-dims", "32,16", "--latent-dim", "4",
                  "--batch-size", "64", "--accelerator", "cpu", "--devices", "1", "--model-name", model, "--no-baselines")
    assert sum(trained["dataset_rows"].values()) == transformed["fct_rows"]
    assert rt.mlflow.get_model_version(model, trained["model_version"]).tags["data.lakefs_ref"] == transformed["merge_commit"]

    # Both applications ran on the cluster, with an executor on each worker, which fetched the
    # Iceberg runtime from the driver into its own work folder.
    apps = {a["name"]: a for a in _json(cluster["ui"])["completedapps"]}
    assert {apps["kronodroid-transform"]["state"], apps["kronodroid-train"]["state"]} == {"FINISHED"}
    for worker in cluster["workers"]:
        ran = {e["appid"] for e in _json(worker["ui"])["finishedexecutors"]}
        assert {apps["kronodroid-transform"]["id"], apps["kronodroid-train"]["id"]} <= ran
        fetched = {p.name for p in (worker["work"] / apps["kronodroid-transform"]["id"]).rglob("*.jar")}
        assert any(name.startswith("iceberg-spark-runtime") for name in fetched), sorted(fetched)
