"""KFP component: the KronoDroid Iceberg transform on a fresh lakeFS run branch.

It runs in the Spark image (SPARK_IMAGE, by version tag): it creates the run
branch and uploads the raw inputs, then on Kubernetes submits a
SparkApplication (Spark Operator) running ``kronodroid_iceberg_job.py`` in
``spark_image`` and waits for it; elsewhere it runs ``spark-submit`` of the same
job in local mode with the image's own jars. Outputs the run branch (not merged).
"""

from typing import NamedTuple

from kfp import dsl

from dfp_core import __version__

SPARK_IMAGE = f"dfp/kronodroid-spark:{__version__}"


@dsl.component(base_image=SPARK_IMAGE, install_kfp_package=False)
def kronodroid_spark_transform(
    run_transform: bool,
    lakefs_repository: str,
    lakefs_endpoint: str,
    target_branch: str,
    input_dir: str,
    run_id: str,
    split_mode: str,
    split_seed: int,
    train_ratio: float,
    val_ratio: float,
    test_ratio: float,
    train_end_year: int,
    val_end_year: int,
    train_end_month: int,
    val_end_month: int,
    max_shrink: float,
    allow_shrink: bool,
    spark_mode: str,
    spark_image: str,
    spark_namespace: str,
    spark_timeout_seconds: int,
    spark_executor_instances: int,
    spark_service_account: str,
) -> NamedTuple("TransformOutputs", [("run_branch", str), ("run_id", str)]):
    """Raw KronoDroid -> Avro Iceberg tables on ``run-<run_id>`` (no merge)."""
    params = dict(locals())
    from collections import namedtuple

    from dfp_core.process_exit import leave_heap_to_the_os
    from dfp_kfp.steps import spark_transform_step

    branch, rid = spark_transform_step(**params)
    leave_heap_to_the_os()  # the step's process ends once KFP has written the outputs
    return namedtuple("TransformOutputs", ["run_branch", "run_id"])(branch, rid)

