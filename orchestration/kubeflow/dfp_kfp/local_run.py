"""Run the same pipeline function with KFP's local runner (``kfp.local``,
SubprocessRunner in this Python environment) against the local stack."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dfp_core.settings import LakeFSSettings, MLflowSettings, dfp_home


def run_pipeline_locally(pipeline_root: Path | None = None, **params: Any) -> dict[str, Any]:
    """Executes every step as a local subprocess; returns the pipeline outputs.

    Defaults point the steps at the local stack (endpoints from the
    environment / ``dfp stack up``) and Spark local mode.
    """
    from kfp import local

    from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import kronodroid_autoencoder_pipeline

    lakefs = LakeFSSettings.from_env(repository=params.get("lakefs_repository"))
    mlflow = MLflowSettings.from_env(tracking_uri=params.get("mlflow_tracking_uri"))
    args = {
        "lakefs_repository": lakefs.repository,
        "lakefs_endpoint": lakefs.endpoint,
        "mlflow_tracking_uri": mlflow.tracking_uri,
        "model_name": mlflow.model_name,
        "spark_mode": "local",
        **{k: v for k, v in params.items() if v is not None},
    }
    if args.get("input_dir"):
        args["input_dir"] = str(Path(args["input_dir"]).resolve())
    root = Path(pipeline_root or dfp_home() / "kfp-local").resolve()
    root.mkdir(parents=True, exist_ok=True)
    # use_venv=False: run the lightweight components in this interpreter, which
    # has the project installed (as the training image does in a cluster).
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    started = time.monotonic()
    task = kronodroid_autoencoder_pipeline(**args)
    outputs = dict(task.outputs)
    return {
        "lakefs_repository": args["lakefs_repository"],
        "lakefs_commit": outputs["lakefs_commit"],
        "model_name": outputs["model_name"],
        "model_version": outputs["model_version"],
        "mlflow_tracking_uri": args["mlflow_tracking_uri"],
        "lakefs_endpoint": args["lakefs_endpoint"],
        "pipeline_root": str(root),
        "seconds": round(time.monotonic() - started, 1),
        "parameters": {k: v for k, v in args.items()},
    }
