"""What each pipeline step does, as plain functions (the KFP components are
thin wrappers that call these inside their container or local subprocess)."""

from __future__ import annotations

import os
import sys

from dfp_core.lakefs_ops import LakeFS
from dfp_core.settings import LakeFSSettings


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _lakefs(repository: str, endpoint: str) -> LakeFS:
    if endpoint:
        os.environ["LAKEFS_ENDPOINT"] = endpoint
    return LakeFS(LakeFSSettings.from_env(repository=repository))


def spark_transform_step(
    run_transform: bool, lakefs_repository: str, lakefs_endpoint: str, target_branch: str, input_dir: str,
    run_id: str, split_seed: int, spark_mode: str, spark_image: str, spark_namespace: str, timeout_seconds: int,
) -> tuple[str, str]:
    """Writes the tables on a fresh run branch; returns (run_branch, run_id).

    ``spark_mode``: "kubernetes" submits a SparkApplication; "local" runs the
    same job in Spark local mode; "auto" picks by whether we run in a cluster.
    With ``run_transform`` false nothing happens and the branch is "".
    """
    if not run_transform:
        _log("run_transform=false: training will use the current head of the target branch")
        return "", ""
    from dfp_core.splits import SplitSpec
    from dfp_spark import run as runs

    lakefs = _lakefs(lakefs_repository, lakefs_endpoint)
    run_id = run_id or runs.new_run_id()
    split = SplitSpec(seed=split_seed)
    from dfp_kfp.spark_application import in_cluster

    mode = spark_mode if spark_mode != "auto" else ("kubernetes" if in_cluster() else "local")
    if mode == "local":
        from dfp_spark.kronodroid_iceberg_job import run

        summary = run(input_dir=input_dir or None, repo=lakefs_repository, target_branch=target_branch,
                      run_id=run_id, split=split, merge=False)
        return summary["run_branch"], run_id
    if mode != "kubernetes":
        raise ValueError(f"spark_mode must be auto, local or kubernetes, got {spark_mode!r}")
    from dfp_kfp.spark_application import KubernetesApi, SparkAppSpec, build_spark_application, wait_for_completion

    ctx = runs.prepare_run(lakefs, lakefs_repository, target_branch, run_id, input_dir or None)
    arguments = ["--repo", lakefs_repository, "--target-branch", target_branch, "--run-branch", ctx.run_branch,
                 "--no-merge", "--split-seed", str(split_seed)]
    manifest = build_spark_application(SparkAppSpec(
        name=f"kronodroid-{run_id}".lower()[:63], namespace=spark_namespace, image=spark_image, arguments=arguments,
        lakefs_endpoint=lakefs.settings.endpoint, lakefs_repository=lakefs_repository,
    ))
    api = KubernetesApi.in_cluster()
    try:
        api.create(manifest)
        wait_for_completion(api, spark_namespace, manifest["metadata"]["name"], timeout_s=timeout_seconds, log=_log)
    except BaseException:
        runs.abort_run(lakefs, ctx)
        raise
    return ctx.run_branch, run_id


def commit_merge_step(run_transform: bool, lakefs_repository: str, lakefs_endpoint: str, run_branch: str,
                      target_branch: str) -> str:
    """Commit + freeze + merge the run branch; returns the commit id training must use.

    Without a transform, the target branch's current head, resolved to a commit
    id, so the lineage tags pin data that cannot move.
    """
    lakefs = _lakefs(lakefs_repository, lakefs_endpoint)
    if not run_transform or not run_branch:
        commit = lakefs.resolve_commit(lakefs_repository, target_branch)
        _log(f"training on {target_branch} at {commit}")
        return commit
    from dfp_spark.run import publish_run

    published = publish_run(lakefs, lakefs_repository, run_branch, target_branch)
    _log(f"merged {run_branch} into {target_branch}: {published['merge_commit']}")
    return published["merge_commit"]


def train_step(lakefs_repository: str, lakefs_endpoint: str, lakefs_ref: str, mlflow_tracking_uri: str,
               max_epochs: int, latent_dim: int, batch_size: int, max_rows_per_split: int, model_name: str,
               accelerator: str = "auto") -> tuple[str, str, str]:
    """Train + register; returns (model_name, model_version, mlflow_run_id)."""
    import json

    from dfp_core.ml.train_kronodroid_autoencoder import TrainConfig, train

    _lakefs(lakefs_repository, lakefs_endpoint)  # endpoint into the environment
    config = TrainConfig(
        repo=lakefs_repository, ref=lakefs_ref, max_epochs=max_epochs, latent_dim=latent_dim, batch_size=batch_size,
        max_rows_per_split=max_rows_per_split, tracking_uri=mlflow_tracking_uri or None, model_name=model_name or None,
        accelerator=accelerator,
    )
    summary = train(config)
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return summary["model_name"], str(summary["model_version"]), summary["run_id"]
