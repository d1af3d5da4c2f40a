"""Run the same pipeline function with KFP's local runner against the local stack.

``subprocess`` (the quickstart's default): every step a subprocess of this
Python environment. ``docker``: every step in its built image
(``kfp.local.DockerRunner``), as a cluster would run it, on the host network
so the containers reach the local lakeFS and MLflow; the Spark step runs
``spark-submit`` inside the Spark image with the image's jars.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfp_core.errors import ConfigError, DfpError
from dfp_core.progress import plain
from dfp_kfp.docker_engine import docker_client, require_images

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

RUNNERS = ("subprocess", "docker")


class PipelineStepError(DfpError):
    """A step of a local pipeline run failed."""


# Where a step container finds the kubeconfig it submits SparkApplications with.
CONTAINER_KUBECONFIG = "/var/run/dfp/kubeconfig"


def _docker_runner(rt: "Runtime", images: tuple[str, ...], input_dir: str | None, kubeconfig: Path | None):
    """A DockerRunner for the local stack, after checking the engine and the images. With
    ``kubeconfig`` (spark_mode=kubernetes), the steps read it as a pod reads its service
    account: mounted read-only, named by KUBECONFIG."""
    # Deferred (KFP, the Docker SDK): only the runner that runs loads it.
    from docker.types import Mount
    from kfp import local

    client = docker_client()
    require_images(client, images)
    lakefs = rt.settings.lakefs.require_credentials()
    environment = {"LAKEFS_ACCESS_KEY_ID": lakefs.access_key_id, "LAKEFS_SECRET_ACCESS_KEY": lakefs.secret_access_key,
                   **rt.settings.mlflow.credential_env()}
    signing_key = rt.settings.mlflow.signing_key_text()
    if signing_key:  # as the cluster's model-signing-key Secret gives it to the training step
        environment["DFP_MODEL_SIGNING_KEY_PEM"] = signing_key
    mounts = []
    if input_dir:
        mounts.append(Mount(target=input_dir, source=input_dir, type="bind", read_only=True))
    if kubeconfig is not None:
        mounts.append(Mount(target=CONTAINER_KUBECONFIG, source=str(kubeconfig), type="bind", read_only=True))
        environment["KUBECONFIG"] = CONTAINER_KUBECONFIG
    # The host network: the stack listens on this machine (127.0.0.1, or DFP_STACK_HOST).
    return local.DockerRunner(network_mode="host", environment=environment, mounts=mounts)


def _readable_copy(kubeconfig: Path, folder: Path) -> Path:
    """The kubeconfig, readable by the images' user (uid 10001), in a folder only we can enter."""
    if not kubeconfig.is_file():
        raise ConfigError(f"kubeconfig {kubeconfig} does not exist; pass --kubeconfig or set KUBECONFIG")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    copy = folder / "kubeconfig"
    copy.write_bytes(kubeconfig.read_bytes())
    os.chmod(copy, 0o644)
    return copy


def run_pipeline_locally(rt: "Runtime", pipeline_root: Path | None = None, runner: str = "subprocess",
                         kubeconfig: Path | None = None, **params: Any) -> dict[str, Any]:
    """Executes every step with KFP's local runner; returns the pipeline outputs.

    Defaults point the steps at the runtime's lakeFS and MLflow and run Spark
    in local mode; ``params`` are pipeline parameters. ``kubeconfig``: with the docker
    runner and ``spark_mode=kubernetes``, the cluster the transform step submits to.
    """
    # Deferred (KFP): only the runner that runs loads it.
    from kfp import local

    from dfp_kfp.components.spark_transform_component import SPARK_IMAGE
    from dfp_kfp.components.train_kronodroid_autoencoder_component import TRAIN_IMAGE
    from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import kronodroid_autoencoder_pipeline

    if runner not in RUNNERS:
        raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    settings = rt.settings
    args = {
        "lakefs_repository": settings.lakefs.repository,
        "lakefs_endpoint": settings.lakefs.endpoint,
        "mlflow_tracking_uri": settings.mlflow.tracking_uri,
        "model_name": settings.mlflow.model_name,
        "spark_mode": "local",
        **{k: v for k, v in params.items() if v is not None},
    }
    if args.get("input_dir"):
        args["input_dir"] = str(Path(args["input_dir"]).resolve())
    root = Path(pipeline_root or settings.stack.home / f"kfp-local-{runner}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        # The steps run as the images' non-root user and write their outputs here.
        os.chmod(root, 0o777)
        mounted = None
        if args["spark_mode"] == "kubernetes":
            if kubeconfig is None:
                raise ConfigError("spark_mode=kubernetes with the docker runner needs a kubeconfig for the transform "
                                  "step: pass --kubeconfig or set KUBECONFIG")
            mounted = _readable_copy(kubeconfig, settings.stack.home / "kfp-local-kube")
        task_runner = _docker_runner(rt, (SPARK_IMAGE, TRAIN_IMAGE), args.get("input_dir"), mounted)
    else:
        # use_venv=False: the steps run in this interpreter, which has the project installed.
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True)
    started = time.monotonic()
    with warnings.catch_warnings():
        # The subprocess runner warns that our images are not Python images; it runs no image.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom", category=RuntimeWarning)
        try:
            task = kronodroid_autoencoder_pipeline(**args)
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
            failed = plain(str(exc)).rsplit("Inner task failed:", 1)[-1].strip(" .'")
            raise PipelineStepError(f"the pipeline's step {failed or '?'} failed (its error line is above); "
                                    f"its files are under {root}") from None
        except ValueError as exc:
            # KFP's DockerRunner starts step containers with auto_remove and counts one it can no
            # longer wait() on as a success (kubeflow/pipelines#13332): that step wrote no outputs,
            # and the next step, or the pipeline's own outputs, ask for them.
            lost = re.search(r"from task '([^']+)', but task '[^']+' not found", str(exc))
            if lost is None:
                raise
            raise PipelineStepError(f"the pipeline's step {lost.group(1)} failed: it wrote no outputs (its error "
                                    f"line is above); its files are under {root}") from None
    outputs = dict(task.outputs)
    return {
        "lakefs_repository": args["lakefs_repository"],
        "lakefs_commit": outputs["lakefs_commit"],
        "model_name": outputs["model_name"],
        "model_version": outputs["model_version"],
        "mlflow_tracking_uri": args["mlflow_tracking_uri"],
        "lakefs_endpoint": args["lakefs_endpoint"],
        "pipeline_root": str(root),
        "runner": runner,
        "seconds": round(time.monotonic() - started, 1),
        "parameters": dict(args),
    }
