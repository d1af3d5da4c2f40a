"""Issue: Kubeflow pipeline. The same pipeline function, run by KFP's local
runner (SubprocessRunner) against the real local stack."""

from __future__ import annotations

import uuid

import mlflow
import pytest

from dfp_core import lineage
from dfp_core.kronodroid.generator import generate
from dfp_kfp.local_run import run_pipeline_locally


@pytest.fixture(scope="module")
def pipeline_run(rt, stack, lakefs, tmp_path_factory):
    data = tmp_path_factory.mktemp("kfp-data")
    generate(data, 300, seed=8)
    repo = "kfp" + uuid.uuid4().hex[:8]
    result = run_pipeline_locally(
        rt, pipeline_root=tmp_path_factory.mktemp("kfp-root"), input_dir=str(data), lakefs_repository=repo,
        run_id="kfp-test", max_epochs=1, batch_size=64, latent_dim=8, model_name=f"kronodroid_autoencoder_{repo}",
        accelerator="cpu",
    )
    return repo, result


@pytest.mark.both_profiles
def test_local_pipeline_run_registers_a_model_pinned_to_its_merge(pipeline_run, lakefs, stack):
    repo, result = pipeline_run
    head = lakefs.resolve_commit(repo, "main")
    assert result["lakefs_commit"] == head
    assert lakefs.commit_metadata(repo, head)["dfp.run_id"] == "kfp-test"  # the merge this run made
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(result["model_name"], result["model_version"])
    assert set(lineage.LINEAGE_TAGS) <= set(version.tags)
    assert version.tags["data.lakefs_ref"] == head and version.tags["data.lakefs_repository"] == repo
    snapshot_ids = lakefs.commit_metadata(repo, lakefs.resolve_commit(repo, "run-kfp-test"))["dfp.snapshot_ids"]
    assert version.tags["data.iceberg_snapshot_id"] in snapshot_ids


def test_without_transform_trains_on_the_branch_head(rt, pipeline_run, lakefs, stack, tmp_path):
    repo, first = pipeline_run
    lakefs.create_branch(repo, "experiment", "main")
    lakefs.upload_bytes(repo, "experiment", "notes/README.md", b"a commit that moves the branch head\n")
    moved = lakefs.commit(repo, "experiment", "move the head")
    result = run_pipeline_locally(
        rt, pipeline_root=tmp_path, run_transform=False, target_branch="experiment", lakefs_repository=repo,
        max_epochs=1, batch_size=64, latent_dim=8, model_name=first["model_name"], accelerator="cpu",
    )
    assert result["lakefs_commit"] == moved
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(result["model_name"], result["model_version"])
    assert version.tags["data.lakefs_ref"] == moved
    assert int(result["model_version"]) == int(first["model_version"]) + 1
    assert lakefs.resolve_commit(repo, "main") == first["lakefs_commit"]  # nothing merged


def test_the_train_step_runs_ddp_in_two_processes_and_writes_rank_zeros_outputs(rt, pipeline_run, stack, tmp_path):
    """strategy=ddp, devices=2: Lightning's launcher runs the step's command again as rank 1, which
    fits and ends before KFP writes outputs; the step's outputs are rank zero's registered version."""
    repo, first = pipeline_run
    result = run_pipeline_locally(
        rt, pipeline_root=tmp_path, run_transform=False, lakefs_repository=repo, max_epochs=1, batch_size=64,
        latent_dim=8, model_name=first["model_name"] + "_ddp", accelerator="cpu", devices="2", strategy="ddp",
        evaluate_baselines=False,
    )
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(result["model_name"], result["model_version"])
    assert result["model_version"] == "1"
    assert client.get_run(version.run_id).data.tags["dfp.world_size"] == "2"
    assert version.tags["data.lakefs_ref"] == first["lakefs_commit"]
