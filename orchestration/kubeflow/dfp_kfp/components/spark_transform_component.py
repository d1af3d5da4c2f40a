"""KFP component: the KronoDroid Iceberg transform on a fresh lakeFS run branch.

On Kubernetes it submits a SparkApplication (Spark Operator) running
``kronodroid_iceberg_job.py`` in the Spark image and waits for it; elsewhere it
runs the same job in Spark local mode. Outputs the run branch (not merged).
"""

from typing import NamedTuple

from kfp import dsl

from .train_kronodroid_autoencoder_component import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE)
def kronodroid_spark_transform(
    run_transform: bool,
    lakefs_repository: str,
    lakefs_endpoint: str,
    target_branch: str,
    input_dir: str,
    run_id: str,
    split_seed: int,
    spark_mode: str,
    spark_image: str,
    spark_namespace: str,
    timeout_seconds: int,
) -> NamedTuple("TransformOutputs", [("run_branch", str), ("run_id", str)]):
    """Raw KronoDroid -> Avro Iceberg tables on ``run-<run_id>`` (no merge)."""
    from collections import namedtuple

    from dfp_kfp.steps import spark_transform_step

    branch, rid = spark_transform_step(
        run_transform, lakefs_repository, lakefs_endpoint, target_branch, input_dir, run_id, split_seed,
        spark_mode, spark_image, spark_namespace, timeout_seconds,
    )
    return namedtuple("TransformOutputs", ["run_branch", "run_id"])(branch, rid)
