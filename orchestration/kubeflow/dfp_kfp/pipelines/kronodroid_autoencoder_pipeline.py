"""The KronoDroid autoencoder pipeline:

  1. Spark transform (SparkOperator on Kubernetes, local ``spark-submit`` elsewhere)
     -> Avro Iceberg tables on a fresh lakeFS run branch;
  2. lakeFS commit + freeze + merge -> the merge commit id;
  3. Lightning training on Feast-served splits at that commit + MLflow
     registration with lineage tags (on a GPU node when ``accelerator=gpu``).

With ``run_transform=false`` steps 1-2 only resolve ``target_branch``'s head to
a commit id, and training uses that.

Transform, training and Spark job parameters are ``TransformConfig``, ``TrainConfig``
and ``SparkJobConfig`` fields under their pipeline names (``dfp_core.params``); a test checks this
signature against them. Optional values that are unset are "" or 0 here.

Compile (from the repository root):
  python -c "from orchestration.kubeflow.dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline; print(compile_kronodroid_autoencoder_pipeline())"
"""

from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes

from dfp_core.params import SparkJobConfig, TrainConfig, TransformConfig
from dfp_core.settings import LakeFSSettings, MLflowSettings

from ..components.lakefs_commit_merge_component import lakefs_commit_merge
from ..components.spark_transform_component import SPARK_IMAGE, kronodroid_spark_transform
from ..components.train_kronodroid_autoencoder_component import TRAIN_IMAGE, train_kronodroid_autoencoder

PIPELINE_NAME = "kronodroid-autoencoder"
# The oldest Kubeflow Pipelines backend that runs the compiled YAML (the README says why;
# tests/unit/test_kfp_backend_version.py checks the YAML against it).
MIN_KFP_BACKEND = "2.15.0"
# Labels on every pod of a run (steps and SparkApplication pods), which
# manifests/pipeline-network-policy.yaml selects.
POD_LABELS = {"app.kubernetes.io/part-of": "dfp-kronodroid"}
PIPELINE_FILE = "kronodroid_autoencoder_pipeline.yaml"
# Kubernetes Secret with the lakeFS key pair (see orchestration/kubeflow/manifests/secrets-example.yaml).
LAKEFS_SECRET = "lakefs-credentials"
LAKEFS_SECRET_ENV = {"access_key_id": "LAKEFS_ACCESS_KEY_ID", "secret_access_key": "LAKEFS_SECRET_ACCESS_KEY"}
# Optional Secret for an MLflow server running its basic-auth app (training steps only).
MLFLOW_SECRET = "mlflow-credentials"
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
# Optional Secret with the key training signs the model's files with (dfp_core.tracking.signing).
SIGNING_SECRET = "model-signing-key"
SIGNING_SECRET_ENV = {"private_key": "DFP_MODEL_SIGNING_KEY_PEM"}
GPU_RESOURCE = "nvidia.com/gpu"
# Requests and limits per step: (cpu request, cpu limit, memory request, memory limit).
RESOURCES = {
    "transform": ("500m", "2", "1Gi", "4Gi"),  # the launcher; the Spark job sizes its own pods
    "merge": ("100m", "1", "256Mi", "1Gi"),
    "train": ("2", "4", "8Gi", "16Gi"),
}
PipelineOutputs = NamedTuple("PipelineOutputs", [("lakefs_commit", str), ("model_name", str), ("model_version", str)])
_T, _M, _S = TransformConfig, TrainConfig, SparkJobConfig


def _configure(task: dsl.PipelineTask, step: str, image: str) -> dsl.PipelineTask:
    cpu, cpu_limit, memory, memory_limit = RESOURCES[step]
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit).set_memory_request(memory).set_memory_limit(memory_limit)
    task.set_caching_options(False)  # every run must see lakeFS as it is now
    task.set_container_image(image)
    for key, value in {**POD_LABELS, "app.kubernetes.io/component": step}.items():
        kubernetes.add_pod_label(task, key, value)
    # Credentials come from the cluster Secret at run time: never parameters, never in the YAML.
    kubernetes.use_secret_as_env(task, secret_name=LAKEFS_SECRET, secret_key_to_env=LAKEFS_SECRET_ENV)
    if step == "train":  # an MLflow server without authentication needs no such Secret
        kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_SECRET_ENV,
                                     optional=True)
        # Without it the version is registered unsigned, and loaders with a public key refuse it.
        kubernetes.use_secret_as_env(task, secret_name=SIGNING_SECRET, secret_key_to_env=SIGNING_SECRET_ENV,
                                     optional=True)
    return task


def build_pipeline(train_image: str = TRAIN_IMAGE, spark_image: str = SPARK_IMAGE):
    """The pipeline function, its steps on these images (version tags, not ``latest``).
    ``spark_image`` is also the default of the ``spark_image`` parameter (the
    image of the SparkApplication's driver and executors)."""
    step_images = {"train": train_image, "spark": spark_image}

    @dsl.pipeline(name=PIPELINE_NAME, description="SparkOperator KronoDroid transform -> lakeFS commit+merge -> Lightning training + MLflow registration")
    def kronodroid_autoencoder_pipeline(
        run_transform: bool = True,
        lakefs_repository: str = LakeFSSettings.repository,
        lakefs_endpoint: str = "http://lakefs:8000",
        target_branch: str = _T.target_branch,
        input_dir: str = "",
        run_id: str = "",
        split_mode: str = _T.split_mode,
        split_seed: int = _T.split_seed,
        train_ratio: float = _T.train_ratio,
        val_ratio: float = _T.val_ratio,
        test_ratio: float = _T.test_ratio,
        train_end_year: int = 0,
        val_end_year: int = 0,
        train_end_month: int = 0,
        val_end_month: int = 0,
        max_shrink: float = _T.max_shrink,
        allow_shrink: bool = _T.allow_shrink,
        mlflow_tracking_uri: str = "http://mlflow:5000",
        model_name: str = MLflowSettings.model_name,
        max_rows_per_split: int = _M.max_rows_per_split,
        train_on: str = _M.train_on,
        latent_dim: int = _M.latent_dim,
        hidden_dims: str = ",".join(map(str, _M.hidden_dims)),
        dropout: float = _M.dropout,
        lr: float = _M.lr,
        weight_decay: float = _M.weight_decay,
        batch_size: int = _M.batch_size,
        max_epochs: int = _M.max_epochs,
        patience: int = _M.patience,
        train_seed: int = _M.seed,
        target_fpr: float = _M.target_fpr,
        score: str = _M.score,
        accelerator: str = _M.accelerator,
        devices: str = _M.devices,
        strategy: str = _M.strategy,
        num_nodes: int = _M.num_nodes,
        evaluate_baselines: bool = _M.evaluate_baselines,
        spark_mode: str = _S.mode,
        spark_image: str = step_images["spark"],
        spark_namespace: str = _S.namespace,
        spark_timeout_seconds: int = _S.timeout_seconds,
        spark_executor_instances: int = _S.executor_instances,
        spark_service_account: str = _S.service_account,
    ) -> PipelineOutputs:
        transform = kronodroid_spark_transform(
            run_transform=run_transform, lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint,
            target_branch=target_branch, input_dir=input_dir, run_id=run_id, split_mode=split_mode,
            split_seed=split_seed, train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio,
            train_end_year=train_end_year, val_end_year=val_end_year, train_end_month=train_end_month,
            val_end_month=val_end_month, max_shrink=max_shrink,
            allow_shrink=allow_shrink, spark_mode=spark_mode, spark_image=spark_image,
            spark_namespace=spark_namespace, spark_timeout_seconds=spark_timeout_seconds,
            spark_executor_instances=spark_executor_instances, spark_service_account=spark_service_account,
        ).set_display_name("spark-transform")
        _configure(transform, "transform", step_images["spark"])
        merge = lakefs_commit_merge(
            run_transform=run_transform, lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint,
            run_branch=transform.outputs["run_branch"], target_branch=target_branch, max_shrink=max_shrink,
            allow_shrink=allow_shrink,
        ).set_display_name("lakefs-commit-merge")
        _configure(merge, "merge", step_images["spark"])
        train_args = dict(
            lakefs_repository=lakefs_repository, lakefs_endpoint=lakefs_endpoint, lakefs_ref=merge.output,
            mlflow_tracking_uri=mlflow_tracking_uri, model_name=model_name, max_rows_per_split=max_rows_per_split,
            train_on=train_on, latent_dim=latent_dim, hidden_dims=hidden_dims, dropout=dropout, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs, patience=patience,
            train_seed=train_seed, target_fpr=target_fpr, score=score, accelerator=accelerator, devices=devices,
            strategy=strategy, num_nodes=num_nodes, evaluate_baselines=evaluate_baselines,
        )
        # One training task per branch: only the GPU one asks the cluster for a GPU.
        with dsl.If(accelerator == "gpu", name="on-gpu"):
            on_gpu = train_kronodroid_autoencoder(**train_args).set_display_name("train-register-gpu")
            _configure(on_gpu, "train", step_images["train"])
            on_gpu.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        with dsl.Else(name="on-cpu"):
            on_cpu = train_kronodroid_autoencoder(**train_args).set_display_name("train-register")
            _configure(on_cpu, "train", step_images["train"])
        return PipelineOutputs(
            merge.output,
            dsl.OneOf(on_gpu.outputs["model_name"], on_cpu.outputs["model_name"]),
            dsl.OneOf(on_gpu.outputs["model_version"], on_cpu.outputs["model_version"]),
        )

    return kronodroid_autoencoder_pipeline


kronodroid_autoencoder_pipeline = build_pipeline()


def compile_kronodroid_autoencoder_pipeline(output_path: str | Path = PIPELINE_FILE, train_image: str | None = None,
                                            spark_image: str | None = None) -> str:
    """Compile the pipeline to YAML; returns the file's path. ``train_image`` /
    ``spark_image``: your registry's copies of the images (default: this version's tags)."""
    path = Path(output_path).resolve()
    pipeline = build_pipeline(train_image or TRAIN_IMAGE, spark_image or SPARK_IMAGE)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return str(path)
