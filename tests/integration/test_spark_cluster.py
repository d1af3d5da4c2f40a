"""The transform and the Feast retrieval on a real Spark standalone cluster: a master and two
workers started from the pyspark distribution on this machine, `SPARK_MASTER=spark://...`.
The executors get the Iceberg and S3A jars from the driver (each worker's work folder holds
them) and reach lakeFS through the S3 gateway; nothing is read from the driver's files."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.inputs import only_dfp_home
from tests.spark_cluster import standalone_cluster, status

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKERS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), WORKERS) as running:
        yield running


def test_the_transform_and_the_feast_retrieval_run_on_a_standalone_cluster(cluster, stack, rt, tmp_path):
    env = {**only_dfp_home(stack), "SPARK_MASTER": cluster["master"]}

    def dfp(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], env=env, cwd=tmp_path,
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
    apps = {a["name"]: a for a in status(cluster["ui"])["completedapps"]}
    assert {apps["kronodroid-transform"]["state"], apps["kronodroid-train"]["state"]} == {"FINISHED"}
    for worker in cluster["workers"]:
        ran = {e["appid"] for e in status(worker["ui"])["finishedexecutors"]}
        assert {apps["kronodroid-transform"]["id"], apps["kronodroid-train"]["id"]} <= ran
        fetched = {p.name for p in (worker["work"] / apps["kronodroid-transform"]["id"]).rglob("*.jar")}
        assert any(name.startswith("iceberg-spark-runtime") for name in fetched), sorted(fetched)
