"""What each pipeline step does (the KFP components are thin wrappers that call
these inside their container, or in a local subprocess).

Each step is an entry point: it builds its runtime context from the
environment (credentials from the Kubernetes Secret, or ``$DFP_HOME/stack.env``
locally) and the pipeline's endpoint parameters, and its configuration from
the pipeline parameters, named as in ``dfp_core.params``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable

from dfp_core.errors import ConfigError, DfpError
from dfp_core.params import (SPARK_MODES, SparkJobConfig, TrainConfig, TransformConfig, from_pipeline, pipeline_fields,
                             to_arguments)
from dfp_core.progress import error, note
from dfp_core.runtime import Runtime
from dfp_spark import raw_store
from dfp_spark.run_lease import RunLease
from dfp_kfp.spark_application import run_spark_application
from dfp_spark.submit import run_local


def ends_in_one_line(step: Callable) -> Callable:
    """A step that fails on a known cause ends with its one error line (and exit code 2), as
    a `dfp` command does, not with a traceback in the step's log."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except DfpError as exc:
            error(str(exc))
            raise SystemExit(2) from None

    return run


def step_runtime(app_name: str, lakefs_endpoint: str = "", mlflow_tracking_uri: str = "") -> Runtime:
    """The step's runtime: the environment, with the pipeline's endpoints over it."""
    return Runtime.from_env(
        os.environ, app_name=app_name,
        lakefs={"endpoint": lakefs_endpoint.rstrip("/") or None},
        mlflow={"tracking_uri": mlflow_tracking_uri or None},
    )


def spark_mode_of(spark_mode: str) -> str:
    if spark_mode not in SPARK_MODES:
        raise ConfigError(f"spark_mode must be one of {', '.join(SPARK_MODES)}, got {spark_mode!r}")
    if spark_mode == "auto":  # in a pod, the Spark Operator; elsewhere, local Spark
        return "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    return spark_mode


@ends_in_one_line
def spark_transform_step(run_transform: bool, lakefs_endpoint: str, spark_image: str, **params: Any) -> tuple[str, str]:
    """Raw inputs on a fresh run branch, then the Spark job writes the tables there
    (not merged). Returns (run_branch, run_id); ("", "") without a transform.

    ``spark_mode`` "kubernetes" submits a SparkApplication (Spark Operator) and waits;
    "local" runs ``spark-submit`` of the same job file here, with this Spark's jars.
    ``params``: the ``TransformConfig`` and ``SparkJobConfig`` fields by pipeline name.
    """
    # Deferred (36 ms of imports): each step loads only its own use case.
    from dfp_spark import transform_run

    if not run_transform:
        note("run_transform=false: training will use the current head of the target branch")
        return "", ""
    spark_names = set(pipeline_fields(SparkJobConfig))
    spark = from_pipeline(SparkJobConfig, {k: v for k, v in params.items() if k in spark_names})
    mode = spark_mode_of(spark.mode)
    rt = step_runtime("kronodroid-transform-step", lakefs_endpoint)
    config = from_pipeline(TransformConfig, {k: v for k, v in params.items() if k not in spark_names})
    config = config.resolved(rt.settings)
    transform_run.check_disk_space(rt.settings, config.input_dir, mode == "local")
    ctx = transform_run.prepare_run(rt.lakefs, config.repo, config.target_branch,
                                    config.run_id or transform_run.new_run_id(), config.input_dir)
    job = dataclasses.replace(config, run_id=ctx.run_id, run_branch=ctx.run_branch, input_dir=None, merge=False)
    try:
        with ctx.lease.heartbeat():  # the job may run on other hosts (pods); this step holds the run
            ctx.lease.stage(f"Spark transform ({mode})")
            if mode == "local":
                # The input rows settle how the driver JVM compiles (SparkSettings.for_input_rows).
                rows = raw_store.load_manifest(rt.lakefs, config.repo, ctx.run_branch).data_rows
                run_local(to_arguments(job), rt.settings.spark.for_input_rows(rows), rt.settings.lakefs, os.environ)
            else:
                run_spark_application(ctx.run_id, to_arguments(job), rt.settings.lakefs, spark_image, spark)
    except BaseException:
        transform_run.abort_run(rt.lakefs, ctx)
        raise
    # Between the steps no process holds the run: gc judges it by the lease's age.
    ctx.lease.hand_over("tables written; awaiting the commit-merge step")
    return ctx.run_branch, ctx.run_id


@ends_in_one_line
def commit_merge_step(run_transform: bool, lakefs_endpoint: str, run_branch: str, **transform_params: Any) -> str:
    """Commit + freeze + merge the run branch; returns the commit id training must use.

    Without a transform, the target branch's current head, resolved to a commit
    id, so the lineage tags pin data that cannot move. A run that cannot be
    merged (too much shrink, a conflict) leaves the target unchanged and its
    branch removed.
    """
    # Deferred (36 ms of imports): each step loads only its own use case.
    from dfp_spark import transform_run

    rt = step_runtime("kronodroid-merge-step", lakefs_endpoint)
    config = from_pipeline(TransformConfig, transform_params).resolved(rt.settings)
    if not run_transform or not run_branch:
        commit = rt.lakefs.resolve_commit(config.repo, config.target_branch)
        note(f"training on {config.target_branch} at {commit}")
        return commit
    lease = RunLease(rt.lakefs, config.repo, run_branch).acquire("commit, freeze and merge")
    ctx = transform_run.RunContext(config.repo, config.target_branch, "", run_branch, "", lease)
    try:
        published = transform_run.publish_run(rt.lakefs, config.repo, run_branch, config.target_branch,
                                              config.shrink_limit)
    except BaseException:
        transform_run.abort_run(rt.lakefs, ctx)  # the branch if it is still there, then the lease
        raise
    transform_run.finish_run(rt.lakefs, ctx)
    note(f"merged {run_branch} into {config.target_branch}: {published['merge_commit']}")
    return published["merge_commit"]


@ends_in_one_line
def train_step(lakefs_repository: str, lakefs_endpoint: str, lakefs_ref: str, mlflow_tracking_uri: str,
               **train_params: Any) -> tuple[str, str, str]:
    """Train + register; returns (model_name, model_version, mlflow_run_id)."""
    # Deferred (scikit-learn, SciPy): each step loads only its own use case.
    from dfp_core.ml.train_kronodroid_autoencoder import train

    with step_runtime("kronodroid-train-step", lakefs_endpoint, mlflow_tracking_uri) as rt:
        config = from_pipeline(TrainConfig, train_params, repo=lakefs_repository, ref=lakefs_ref)
        summary = train(rt, config)
        rank_zero = rt.settings.process.is_rank_zero
    if not rank_zero:
        # A DDP worker, which Lightning's launcher started by running this step's command again:
        # it ends here, before the KFP executor writes outputs, so the step's are rank zero's.
        print(json.dumps(summary.to_json(), sort_keys=True, default=str), file=sys.stderr, flush=True)
        raise SystemExit(0)
    print(json.dumps(summary.to_json(), sort_keys=True, default=str), flush=True)
    return summary.model_name, str(summary.model_version), summary.run_id
