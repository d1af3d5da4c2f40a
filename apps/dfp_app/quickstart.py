"""``dfp quickstart``: the whole system on this machine in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from dfp_core import stack
from dfp_core.progress import command_log, console, note, quiet_stage, stage
from dfp_core.runtime import Runtime
from dfp_core.settings import Settings
from dfp_kfp.local_run import run_pipeline_locally

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

    with quiet(1, "local stack (lakeFS; MLflow starts beside the pipeline)"):
        # MLflow (two Python processes importing it, ~9 s) starts beside the sample and the
        # transform, which need only lakeFS; the train step waits for it (Runtime.tracking).
        status = stack.up(settings.stack, repository=repo or settings.lakefs.repository, ready_later=("mlflow",))
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
            # Deferred (pyarrow, pandas): only when the sample is generated.
            from dfp_core.kronodroid.generator import VERSION, generate

            # The generator's version in the name: a sample an older generator cached is not reused.
            input_dir = rt.settings.stack.home / "sample" / f"rows{rows}-seed{seed}-v{VERSION}"
            if not (input_dir / "GENERATED.json").is_file():
                generate(input_dir, rows, seed)
            note(f"synthetic KronoDroid sample ({rows} rows) in {input_dir}")
        else:
            note(f"real KronoDroid data from {input_dir}")
    with quiet(3, "pipeline (transform -> commit+merge -> train+register) with KFP's local runner"):
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
        metrics = rt.mlflow.get_run(version.run_id).data.metrics
        for line in worth_lines(metrics, data_kind(input_dir)):
            console.print(line)
        if log is not None:
            console.print(f"  log         {log}")
        for key, value in lineage.items():
            console.print(f"    {key:28s} {value}")
    return result, lineage, {"mlflow_model_ui": mlflow_ui, "lakefs_commit_ui": lakefs_ui}


def data_kind(input_dir: Path) -> str:
    """What the model was trained on, as the final block names it: the generator's marker
    says the data is synthetic."""
    # Deferred (pyarrow, pandas): only when the sample is generated.
    from dfp_core.kronodroid.generator import MARKER

    if (input_dir / MARKER).is_file():
        return f"synthetic, KronoDroid-shaped sample from dfp generate ({input_dir}), not real apps"
    return f"KronoDroid data from {input_dir}"


# The baselines named on the comparison line, in the README's order.
BASELINE_NAMES = {"pca": "PCA", "isolation_forest": "IsolationForest", "random_forest": "RandomForest (supervised)"}


def worth_lines(metrics: Mapping[str, float], data: str) -> list[str]:
    """The test split's figures in the form of README's "What the model is worth" table, and
    the baselines' ROC-AUC beside them, for the data named."""
    lines = [f"  data        {data}"]
    if "test_roc_auc" in metrics:
        caught = [f"{metrics[k]:.2f} at {fpr} benign FPR" for k, fpr in
                  (("test_tpr_at_fpr_1pct", "1%"), ("test_tpr_at_fpr_5pct", "5%")) if k in metrics]
        lines.append(f"  test split  ROC-AUC {metrics['test_roc_auc']:.3f}; malware caught: {', '.join(caught)}")
    others = [f"{label} {metrics[f'eval_roc_auc__{m}']:.3f}" for m, label in BASELINE_NAMES.items()
              if f"eval_roc_auc__{m}" in metrics]
    if others:
        lines.append(f"  baselines   ROC-AUC {', '.join(others)} (real-data figures: README, What the model is worth)")
    return lines
