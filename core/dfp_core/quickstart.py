"""``dfp quickstart``: the whole system on this machine in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from dfp_core import stack
from dfp_core.progress import command_log, console, note, quiet_stage, stage
from dfp_core.runtime import Runtime
from dfp_core.settings import Settings

STEPS = 4


def quickstart(env: Mapping[str, str], input_dir: Path | None = None, rows: int = 4000, seed: int = 0,
               max_epochs: int = 10, repo: str | None = None, verbose: bool = False) -> dict:
    """The whole system in four stages. The first three write their output (servers, Spark,
    KFP's executors) to one log under ``DFP_HOME/logs`` and show one line each; ``verbose``
    streams it instead."""
    settings = Settings.from_env(env)
    log = command_log(settings.stack.home, "quickstart")
    hint = "`dfp quickstart -v` streams it"

    def quiet(index: int, title: str):
        return quiet_stage(index, STEPS, title, log, verbose=verbose, retry_hint=hint)

    with quiet(1, "local stack (lakeFS + MLflow)"):
        status = stack.up(settings.stack, repository=repo or settings.lakefs.repository)
    # Read after `up`: the stack's endpoints and keys are in the stack.env it just wrote. The
    # pipeline's steps find them the same way, through DFP_HOME.
    with Runtime.from_env(env, app_name="kfp-local", lakefs={"repository": repo}) as rt:
        result, lineage, links = _run(rt, quiet, input_dir, rows, seed, max_epochs, status["credentials_file"],
                                      None if verbose else log)
    return {**result, **links, "lineage_tags": lineage, "credentials_file": status["credentials_file"],
            **({} if verbose else {"log": str(log)})}


def _run(rt: Runtime, quiet, input_dir: Path | None, rows: int, seed: int, max_epochs: int, credentials_file: str,
         log: Path | None):
    with quiet(2, "input data"):
        if input_dir is None:
            from dfp_core.kronodroid.generator import generate

            input_dir = rt.settings.stack.home / "sample" / f"rows{rows}-seed{seed}"
            if not (input_dir / "GENERATED.json").is_file():
                generate(input_dir, rows, seed)
            note(f"synthetic KronoDroid sample ({rows} rows) in {input_dir}")
        else:
            note(f"real KronoDroid data from {input_dir}")
    with quiet(3, "pipeline (transform -> commit+merge -> train+register) with KFP's local runner"):
        from dfp_kfp.local_run import run_pipeline_locally

        result = run_pipeline_locally(rt, input_dir=str(input_dir), max_epochs=max_epochs)
    with stage(4, STEPS, "where to look"):
        version = rt.mlflow.get_model_version(result["model_name"], result["model_version"])
        lineage = {k: v for k, v in sorted(version.tags.items()) if k.startswith(("data.", "feast.", "dataset."))}
        lakefs_ui = f"{result['lakefs_endpoint']}/repositories/{result['lakefs_repository']}/commits/{result['lakefs_commit']}"
        mlflow_ui = f"{result['mlflow_tracking_uri']}/#/models/{result['model_name']}/versions/{result['model_version']}"
        console.print(f"\n  MLflow UI   {mlflow_ui}\n  lakeFS UI   {lakefs_ui}")
        console.print(f"  logins      lakeFS: access key id and secret; MLflow: MLFLOW_TRACKING_USERNAME and "
                      f"_PASSWORD; both in {credentials_file}")
        console.print(f"  model       {result['model_name']} version {result['model_version']}")
        if log is not None:
            console.print(f"  log         {log}")
        for key, value in lineage.items():
            console.print(f"    {key:28s} {value}")
    return result, lineage, {"mlflow_model_ui": mlflow_ui, "lakefs_commit_ui": lakefs_ui}
