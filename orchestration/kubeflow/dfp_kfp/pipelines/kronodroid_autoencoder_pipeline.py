"""The KronoDroid autoencoder pipeline:

  1. Spark transform (SparkOperator on Kubernetes, Spark local mode elsewhere)
     -> Avro Iceberg tables on a fresh lakeFS run branch;
  2. lakeFS commit + freeze + merge -> the merge commit id;
  3. Lightning training on Feast-served splits at that commit + MLflow
     registration with lineage tags.

With ``run_transform=false`` steps 1-2 only resolve ``target_branch``'s head to
a commit id, and training uses that.

Compile (from the repository root):
  python -c "from orchestration.kubeflow.dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline; print(compile_kronodroid_autoencoder_pipeline())"
"""


from pathlib import Path
from typing import NamedTuple

from dfp_core.ml.train_kronodroid_autoencoder import TrainConfig
from kfp import compiler, dsl, kubernetes

from ..components.lakefs_commit_merge_component import lakefs_commit_merge
from ..components.spark_transform_component import kronodroid_spark_transform
from ..components.train_kronodroid_autoencoder_component import train_kronodroid_autoencoder

PIPELINE_NAME = "kronodroid-autoencoder"
PIPELINE_FILE = "kronodroid_autoencoder_pipeline.yaml"
# Kubernetes Secret with the lakeFS key pair (see orchestration/kubeflow/manifests/secrets-example.yaml).
LAKEFS_SECRET = "lakefs-credentials"
LAKEFS_SECRET_ENV = {"access_key_id": "LAKEFS_ACCESS_KEY_ID", "secret_access_key": "LAKEFS_SECRET_ACCESS_KEY"}


def _with_lakefs_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # Credentials come from the cluster Secret at run time: never parameters, never in the YAML.
    return kubernetes.use_secret_as_env(task, secret_name=LAKEFS_SECRET, secret_key_to_env=LAKEFS_SECRET_ENV)


@dsl.pipeline(name=PIPELINE_NAME, description="SparkOperator KronoDroid transform -> lakeFS commit+merge -> Lightning training + MLflow registration")
def kronodroid_autoencoder_pipeline(
    run_transform: bool = True,
    lakefs_repository: str = "kronodroid",
    lakefs_endpoint: str = "http://lakefs:8000",
    target_branch: str = "main",
    input_dir: str = "",
    run_id: str = "",
    split_seed: int = 42,
    mlflow_tracking_uri: str = "http://mlflow:5000",
    model_name: str = "kronodroid_autoencoder",
    max_epochs: int = TrainConfig.max_epochs,
    latent_dim: int = TrainConfig.latent_dim,
    batch_size: int = TrainConfig.batch_size,
    max_rows_per_split: int = 0,
    accelerator: str = "auto",
    spark_mode: str = "auto",
    spark_image: str = "dfp/kronodroid-spark:latest",
    spark_namespace: str = "kubeflow",
    spark_timeout_seconds: int = 3600,
) -> NamedTuple("PipelineOutputs", [("lakefs_commit", str), ("model_name", str), ("model_version", str)]):
    transform = kronodroid_spark_transform(
        run_transform=run_transform, lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint,
        target_branch=target_branch, input_dir=input_dir, run_id=run_id, split_seed=split_seed,
        spark_mode=spark_mode, spark_image=spark_image, spark_namespace=spark_namespace,
        timeout_seconds=spark_timeout_seconds,
    ).set_display_name("spark-transform")
    merge = lakefs_commit_merge(
        run_transform=run_transform, lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint,
        run_branch=transform.outputs["run_branch"], target_branch=target_branch,
    ).set_display_name("lakefs-commit-merge")
    train = train_kronodroid_autoencoder(
        lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint, lakefs_ref=merge.output,
        mlflow_tracking_uri=mlflow_tracking_uri, max_epochs=max_epochs, latent_dim=latent_dim,
        batch_size=batch_size, max_rows_per_split=max_rows_per_split, model_name=model_name,
        accelerator=accelerator,
    ).set_display_name("train-register")
    for task in (transform, merge, train):
        _with_lakefs_secret(task)
        task.set_caching_options(False)  # every run must see lakeFS as it is now
    train.set_memory_request("4Gi").set_cpu_request("2")
    outputs = NamedTuple("PipelineOutputs", [("lakefs_commit", str), ("model_name", str), ("model_version", str)])
    return outputs(merge.output, train.outputs["model_name"], train.outputs["model_version"])


def compile_kronodroid_autoencoder_pipeline(output_path: str | Path = PIPELINE_FILE) -> str:
    """Compile the pipeline to YAML; returns the file's path."""
    path = Path(output_path).resolve()
    compiler.Compiler().compile(pipeline_func=kronodroid_autoencoder_pipeline, package_path=str(path))
    return str(path)
