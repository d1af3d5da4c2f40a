"""The KronoDroid autoencoder pipeline:

  1. Spark transform (SparkOperator on Kubernetes, local ``spark-submit`` elsewhere)
     -> Avro Iceberg tables on a fresh lakeFS run branch;
  2. lakeFS commit + freeze + merge -> the merge commit id;
  3. Lightning training on Feast-served splits at that commit + MLflow
     registration with lineage tags (on a GPU node when ``accelerator=gpu``).

With ``run_transform=false`` steps 1-2 only resolve ``target_branch``'s head to
a commit id, and training uses that.

The signature is generated (``dfp_kfp.parameters``): the pipeline's own parameters, then every
``TransformConfig``, ``TrainConfig`` and ``SparkJobConfig`` field under its pipeline name
(``dfp_core.params``), with its help as the parameter's description. Optional values that are
unset are "" or 0 here. The components' signatures are generated from the same list
(``dfp_kfp.components.signatures``), and each step gets the parameters its component declares.

Compile (from the repository root):
  python -c "from orchestration.kubeflow.dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline; print(compile_kronodroid_autoencoder_pipeline())"
"""

import inspect
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes

from ..components.lakefs_commit_merge_component import lakefs_commit_merge
from ..components.spark_transform_component import SPARK_IMAGE, kronodroid_spark_transform
from ..components.train_kronodroid_autoencoder_component import TRAIN_IMAGE, train_kronodroid_autoencoder
from ..parameters import pipeline_parameters

PIPELINE_NAME = "kronodroid-autoencoder"
DESCRIPTION = "SparkOperator KronoDroid transform -> lakeFS commit+merge -> Lightning training + MLflow registration"
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
    image of the SparkApplication's driver and executors). Its signature is
    ``pipeline_parameters``; each step gets the parameters its component takes."""
    step_images = {"train": train_image, "spark": spark_image}
    parameters = pipeline_parameters(spark_image)
    names = [p.name for p, _ in parameters]
    transform_inputs = list(kronodroid_spark_transform.component_spec.inputs)
    merge_inputs = [n for n in lakefs_commit_merge.component_spec.inputs if n != "run_branch"]
    train_inputs = [n for n in train_kronodroid_autoencoder.component_spec.inputs if n != "lakefs_ref"]

    def kronodroid_autoencoder_pipeline(*values) -> PipelineOutputs:
        given = dict(zip(names, values))
        transform = kronodroid_spark_transform(**{n: given[n] for n in transform_inputs}).set_display_name("spark-transform")
        _configure(transform, "transform", step_images["spark"])
        merge = lakefs_commit_merge(run_branch=transform.outputs["run_branch"], **{n: given[n] for n in merge_inputs}
                                    ).set_display_name("lakefs-commit-merge")
        _configure(merge, "merge", step_images["spark"])
        train_args = {"lakefs_ref": merge.output, **{n: given[n] for n in train_inputs}}
        # One training task per branch: only the GPU one asks the cluster for a GPU.
        with dsl.If(given["accelerator"] == "gpu", name="on-gpu"):
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

    # KFP reads the parameters from the signature and their descriptions from the docstring.
    kronodroid_autoencoder_pipeline.__signature__ = inspect.Signature([p for p, _ in parameters],
                                                                      return_annotation=PipelineOutputs)
    kronodroid_autoencoder_pipeline.__doc__ = f"{DESCRIPTION}.\n\nArgs:\n" + "\n".join(f"    {line}" for _, line in parameters)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(kronodroid_autoencoder_pipeline)


kronodroid_autoencoder_pipeline = build_pipeline()


def compile_kronodroid_autoencoder_pipeline(output_path: str | Path = PIPELINE_FILE, train_image: str | None = None,
                                            spark_image: str | None = None) -> str:
    """Compile the pipeline to YAML; returns the file's path. ``train_image`` /
    ``spark_image``: your registry's copies of the images (default: this version's tags)."""
    path = Path(output_path).resolve()
    pipeline = build_pipeline(train_image or TRAIN_IMAGE, spark_image or SPARK_IMAGE)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return str(path)
