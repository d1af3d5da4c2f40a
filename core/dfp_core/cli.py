"""``dfp``: one command per stage. Heavy imports happen inside each command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from dfp_core.errors import DfpError
from dfp_core.ml.train_kronodroid_autoencoder import TrainConfig as _Defaults  # light: no torch at import

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
stack_app = typer.Typer(no_args_is_help=True, help="Local lakeFS + MLflow servers.")
app.add_typer(stack_app, name="stack")
pipeline_app = typer.Typer(no_args_is_help=True, help="The Kubeflow pipeline: compile it, or run it locally.")
app.add_typer(pipeline_app, name="pipeline")


def emit(summary: dict) -> None:
    """Machine-readable result: always the last line on stdout."""
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


@stack_app.command("up")
def stack_up(
    lakefs_port: Optional[int] = typer.Option(None, help="lakeFS port [env DFP_LAKEFS_PORT, default 8000]"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow port [env DFP_MLFLOW_PORT, default 5000]"),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Start lakeFS and MLflow (idempotent) and wait until both are healthy."""
    from dfp_core import stack
    from dfp_core.settings import StackSettings

    result = stack.up(StackSettings.from_env(lakefs_port=lakefs_port, mlflow_port=mlflow_port))
    _print_status(result, as_json)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `up` started; data stays in DFP_HOME."""
    from dfp_core import stack

    stack.down()


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Endpoints, pids, health and the credentials file."""
    from dfp_core import stack

    _print_status(stack.status(), as_json)


@stack_app.command("reset")
def stack_reset(yes: bool = typer.Option(False, "--yes", help="Confirm deleting all stack data.")) -> None:
    """Stop the stack and delete DFP_HOME (repositories, MLflow runs, credentials)."""
    from dfp_core import stack

    if not yes:
        raise DfpError("reset deletes every lakeFS repository and MLflow run in DFP_HOME; pass --yes to confirm")
    stack.reset()


@app.command("generate")
def generate_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write the archives into."),
    rows: int = typer.Option(2000, "--rows", min=4, help="Rows over all archives."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
    layout: str = typer.Option("archives", "--layout", help="archives (the 4 KronoDroid zips) or subset (one CSV)."),
    start_year: int = typer.Option(2008, "--start-year"),
    end_year: int = typer.Option(2020, "--end-year"),
) -> None:
    """Write synthetic KronoDroid-shaped data (marked as synthetic)."""
    from dfp_core.generator import generate

    emit(generate(out, rows, seed, layout=layout, start_year=start_year, end_year=end_year))


@app.command("transform")
def transform_cmd(
    input_dir: Optional[Path] = typer.Option(None, "--input", help="KronoDroid archives/CSVs; omit to reuse the raw files on the target branch."),
    repo: Optional[str] = typer.Option(None, "--repo", help="lakeFS repository [env LAKEFS_REPOSITORY, default kronodroid]."),
    target_branch: str = typer.Option("main", "--target-branch"),
    run_id: Optional[str] = typer.Option(None, "--run-id"),
    split_mode: str = typer.Option("random", "--split-mode", help="random | time"),
    split_seed: int = typer.Option(42, "--split-seed"),
    train_ratio: float = typer.Option(0.7, "--train-ratio"),
    val_ratio: float = typer.Option(0.15, "--val-ratio"),
    test_ratio: float = typer.Option(0.15, "--test-ratio"),
    train_end_year: Optional[int] = typer.Option(None, "--train-end-year"),
    val_end_year: Optional[int] = typer.Option(None, "--val-end-year"),
    keep_failed_branch: bool = typer.Option(False, "--keep-failed-branch"),
    max_shrink: Optional[float] = typer.Option(None, "--max-shrink", min=0.0, max=1.0, help="Largest fraction of fct rows a run may remove from the target branch [default 0.2]."),
    allow_shrink: bool = typer.Option(False, "--allow-shrink", help="Merge however much the fct table shrinks."),
) -> None:
    """Raw archives -> Avro Iceberg tables on a run branch, committed and merged."""
    from dfp_core.splits import SplitSpec
    from dfp_spark.kronodroid_iceberg_job import run

    split = SplitSpec(
        mode=split_mode, seed=split_seed, train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio,
        train_end_year=train_end_year, val_end_year=val_end_year,
    )
    emit(run(input_dir=input_dir, repo=repo, target_branch=target_branch, run_id=run_id, split=split,
             keep_failed_branch=keep_failed_branch, max_fct_shrink=max_shrink, allow_shrink=allow_shrink))


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@app.command("train")
def train_cmd(
    repo: Optional[str] = typer.Option(None, "--repo", help="lakeFS repository [env LAKEFS_REPOSITORY, default kronodroid]."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Branch or commit id [env LAKEFS_BRANCH, default main]; resolved to a commit."),
    snapshot_id: Optional[str] = typer.Option(None, "--snapshot-id", help="Pin an Iceberg snapshot (default: the ref's current one)."),
    max_rows_per_split: int = typer.Option(0, "--max-rows-per-split", min=0, help="0 = all rows; N = deterministic subset."),
    train_on: str = typer.Option("benign", "--train-on", help="benign (anomaly detection) | all"),
    latent_dim: int = typer.Option(_Defaults.latent_dim, "--latent-dim", min=1),
    hidden_dims: str = typer.Option(",".join(map(str, _Defaults.hidden_dims)), "--hidden-dims", help="Encoder layer sizes, comma-separated."),
    dropout: float = typer.Option(_Defaults.dropout, "--dropout"),
    lr: float = typer.Option(_Defaults.lr, "--lr"),
    weight_decay: float = typer.Option(_Defaults.weight_decay, "--weight-decay"),
    batch_size: int = typer.Option(_Defaults.batch_size, "--batch-size", min=1),
    max_epochs: int = typer.Option(_Defaults.max_epochs, "--max-epochs", min=1),
    patience: int = typer.Option(_Defaults.patience, "--patience", min=0, help="Early stopping patience on val_loss."),
    seed: int = typer.Option(_Defaults.seed, "--seed"),
    threshold_quantile: float = typer.Option(_Defaults.threshold_quantile, "--threshold-quantile"),
    accelerator: str = typer.Option("auto", "--accelerator", help="cpu | gpu | auto"),
    devices: str = typer.Option("auto", "--devices"),
    strategy: str = typer.Option("auto", "--strategy", help="auto | ddp | ..."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="[env DFP_MODEL_NAME, default kronodroid_autoencoder]"),
    model_alias: Optional[str] = typer.Option(None, "--alias", help="[env DFP_MODEL_ALIAS, default candidate]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="[env MLFLOW_EXPERIMENT_NAME]"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="[env MLFLOW_TRACKING_URI]"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also evaluate PCA, IsolationForest, RandomForest."),
) -> None:
    """Train on Feast-served splits at a lakeFS ref; log and register in MLflow."""
    from dfp_core.ml.train_kronodroid_autoencoder import TrainConfig, train
    from dfp_core.settings import LakeFSSettings

    lakefs = LakeFSSettings.from_env(repository=repo, branch=ref)
    config = TrainConfig(
        repo=lakefs.repository, ref=lakefs.branch, snapshot_id=snapshot_id, max_rows_per_split=max_rows_per_split,
        train_on=train_on, latent_dim=latent_dim, hidden_dims=_int_tuple(hidden_dims), dropout=dropout, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs, patience=patience, seed=seed,
        threshold_quantile=threshold_quantile, accelerator=accelerator, devices=devices, strategy=strategy,
        num_nodes=num_nodes, tracking_uri=tracking_uri, experiment_name=experiment, model_name=model_name,
        model_alias=model_alias, evaluate_baselines=baselines,
    )
    emit(train(config))


@pipeline_app.command("compile")
def pipeline_compile(output: Path = typer.Option(Path("kronodroid_autoencoder_pipeline.yaml"), "--output")) -> None:
    """Compile the pipeline to YAML (for upload to Kubeflow Pipelines)."""
    from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline

    emit({"pipeline_yaml": compile_kronodroid_autoencoder_pipeline(output)})


@pipeline_app.command("run-local")
def pipeline_run_local(
    input_dir: Optional[Path] = typer.Option(None, "--input", help="Raw KronoDroid data; omit to reuse the raw files on the target branch."),
    run_transform: bool = typer.Option(True, "--run-transform/--no-run-transform", help="false: train on target_branch's current head."),
    lakefs_repository: Optional[str] = typer.Option(None, "--repo"),
    target_branch: str = typer.Option("main", "--target-branch"),
    run_id: str = typer.Option("", "--run-id"),
    max_epochs: int = typer.Option(_Defaults.max_epochs, "--max-epochs", min=1),
    latent_dim: int = typer.Option(_Defaults.latent_dim, "--latent-dim", min=1),
    batch_size: int = typer.Option(_Defaults.batch_size, "--batch-size", min=1),
    max_rows_per_split: int = typer.Option(0, "--max-rows-per-split", min=0),
    model_name: Optional[str] = typer.Option(None, "--model-name"),
    accelerator: str = typer.Option("auto", "--accelerator"),
) -> None:
    """Run the pipeline end to end with KFP's local runner against the local stack."""
    from dfp_kfp.local_run import run_pipeline_locally

    emit(run_pipeline_locally(
        input_dir=str(input_dir) if input_dir else "", run_transform=run_transform,
        lakefs_repository=lakefs_repository, target_branch=target_branch, run_id=run_id, max_epochs=max_epochs,
        latent_dim=latent_dim, batch_size=batch_size, max_rows_per_split=max_rows_per_split, model_name=model_name,
        accelerator=accelerator,
    ))


@app.command("quickstart")
def quickstart_cmd(
    input_dir: Optional[Path] = typer.Option(None, "--input", help="Real KronoDroid archives; default: a generated sample."),
    rows: int = typer.Option(4000, "--rows", min=40, help="Rows of the generated sample."),
    seed: int = typer.Option(0, "--seed"),
    max_epochs: int = typer.Option(10, "--max-epochs", min=1),
    repo: Optional[str] = typer.Option(None, "--repo", help="lakeFS repository [default kronodroid]."),
) -> None:
    """Stack up, sample data, the whole pipeline with KFP's local runner, then where to look."""
    from dfp_core.quickstart import quickstart

    emit(quickstart(input_dir=input_dir, rows=rows, seed=seed, max_epochs=max_epochs, repo=repo))


@app.command("reproduce")
def reproduce_cmd(
    model: str = typer.Option(..., "--model", help="Registered model name."),
    version: Optional[str] = typer.Option(None, "--version"),
    alias: Optional[str] = typer.Option(None, "--alias"),
    retrain: bool = typer.Option(False, "--retrain", help="Also train again with the run's hyperparameters."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
) -> None:
    """Rebuild a model's exact train/val/test data from its registry tags and verify it."""
    from dfp_core.ml.reproduce import reproduce

    report = reproduce(model, version, alias, retrain=retrain, tracking_uri=tracking_uri)
    emit(report.to_dict())
    if not report.matches:
        for difference in report.differences:
            print(f"mismatch: {difference}", file=sys.stderr)
        raise typer.Exit(1)


@app.command("score")
def score_cmd(
    model_uri: str = typer.Option(..., "--model-uri", help="models:/name/version, models:/name@alias, runs:/..."),
    input_path: str = typer.Option(..., "--input", help="KronoDroid archives/CSV (file or folder), or lakefs://repo/ref"),
    out: Path = typer.Option(..., "--out", help="Output .csv or .parquet (one row per input row)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
) -> None:
    """Score apps: reconstruction error and anomaly flag per sample; unscorable rows listed with the reason."""
    from dfp_core.ml.scoring import score, score_lakefs_ref

    if input_path.startswith("lakefs://"):
        emit(score_lakefs_ref(model_uri, input_path, out, tracking_uri))
    else:
        emit(score(model_uri, Path(input_path), out, tracking_uri))


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option(..., "--model"),
    version: Optional[str] = typer.Option(None, "--version"),
    alias: Optional[str] = typer.Option(None, "--alias"),
    time_split: bool = typer.Option(False, "--time-split", help="Train on years <= --train-end-year, report each later year."),
    train_end_year: Optional[int] = typer.Option(None, "--train-end-year"),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the evaluation to the model's training run."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
) -> None:
    """Autoencoder vs PCA, IsolationForest and a supervised RandomForest, per data source (or per year)."""
    from dfp_core.ml.reproduce import evaluate_registered

    emit(evaluate_registered(model, version, alias, time_split, train_end_year, log, tracking_uri))


def _print_status(result: dict, as_json: bool) -> None:
    if as_json:
        emit(result)
        return
    for name, svc in result["services"].items():
        state = "healthy" if svc["healthy"] else ("running" if svc["running"] else "stopped")
        pid = f" pid {svc['pid']}" if svc["pid"] else ""
        print(f"{name:7s} {state:8s} {svc['endpoint']}{pid}")
    print(f"credentials: {result['credentials_file']}")


def main() -> None:
    try:
        app()
    except DfpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
