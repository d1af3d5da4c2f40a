"""``dfp``: one command per stage. Each command builds its runtime context once
(``Runtime.from_env``: its options over the environment over ``stack.env``)
and passes it down. Heavy imports happen inside each command.

The options of ``transform``, ``train`` and ``pipeline run-local`` are generated
from ``TransformConfig`` and ``TrainConfig`` (``dfp_core.params``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from dfp_core.errors import DfpError
from dfp_core.params import (PSI_BOUND, REPO_HELP, Field, SparkJobConfig, TrainConfig, TransformConfig, format_value, params_of,
                             parse_value)
from dfp_core.process_exit import leave_heap_to_the_os, quiet_teardown_after_exit_handlers
from dfp_core.progress import command_log, error, note, quiet_stage, show
from dfp_core.k8s.layout import NodeSettings
from dfp_core.settings import STACK_PROFILES
from dfp_feast import FEAST_CONFIG_FILE
from dfp_kfp.local_run import run_pipeline_locally

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
stack_app = typer.Typer(no_args_is_help=True, help="Local lakeFS + MLflow servers.")
app.add_typer(stack_app, name="stack")
pipeline_app = typer.Typer(no_args_is_help=True, help="The Kubeflow pipeline: compile it, or run it locally.")
app.add_typer(pipeline_app, name="pipeline")
feast_app = typer.Typer(no_args_is_help=True, help="The Feast feature repository.")
app.add_typer(feast_app, name="feast")
runs_app = typer.Typer(no_args_is_help=True, help="Transform runs on lakeFS: list them, remove abandoned ones.")
app.add_typer(runs_app, name="runs")
cluster_app = typer.Typer(no_args_is_help=True, help="A one-node Kubernetes cluster on this machine (root).")
app.add_typer(cluster_app, name="cluster")


def emit(summary: dict) -> None:
    """Machine-readable result: always the last line on stdout."""
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def runtime(app_name: str = "dfp", **overrides):
    """This command's runtime: its options over the environment over ``stack.env``."""
    # Deferred (49 ms of imports): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.runtime import Runtime

    return Runtime.from_env(os.environ, app_name=app_name, **overrides)


# ----------------------------------------------------------------------------- generated options


def _option(fld: Field, name: str | None = None) -> inspect.Parameter:
    """A keyword parameter with a ``typer.Option`` for one config field (default None:
    an option left out keeps the config's default)."""
    flag = fld.flag
    decl = f"{flag}/--no-{flag[2:]}" if fld.type is bool else flag
    kind = {tuple: str, Path: Path}.get(fld.type, fld.type)
    default = fld.default if fld.type is bool else None
    # Parentheses: square brackets in help text are markup to the help renderer.
    shown = "" if fld.default is None or fld.type is bool else f" (default: {format_value(fld.default)})"
    option = typer.Option(default, decl, help=fld.param.help + shown, show_default=fld.type is bool)
    return inspect.Parameter(name or fld.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind if fld.type is bool else Optional[kind])


def _given(fields: list[Field], values: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave, typed like the config's fields."""
    out = {}
    for fld in fields:
        value = values.pop(fld.name)
        if value is None:
            continue
        out[fld.name] = parse_value(fld, value) if fld.type is tuple else value
    return out


def _own_options(fn: Callable) -> list[inspect.Parameter]:
    """The command's own options (after its first, generated argument), keyword-only,
    with their annotations resolved (this module's annotations are strings)."""
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]) for p in params]


def with_config(cls) -> Callable:
    """Decorate ``command(config, **other_options)``: the config's fields become
    options of the command, beside the command's own."""

    def decorate(fn: Callable) -> Callable:
        fields = [f for f in params_of(cls) if f.param.cli]
        own = _own_options(fn)

        @functools.wraps(fn)
        def command(**values):
            return fn(cls(**_given(fields, values)), **values)

        del command.__wrapped__  # typer must see the generated signature, not fn's
        command.__signature__ = inspect.Signature([*(_option(f) for f in fields), *own])
        command.__annotations__ = {}
        return command

    return decorate


def verbose_option(streamed: str) -> Any:
    """``-v/--verbose`` of a quiet command: ``streamed`` names the output it streams to the
    terminal instead of writing it to ``DFP_HOME/logs/``."""
    return typer.Option(False, "--verbose", "-v", help=f"Stream {streamed} instead of writing it to DFP_HOME/logs/.")


# Options several commands share, each defined here once.
def tracking_uri_option() -> Any:
    return typer.Option(None, "--tracking-uri", help="MLflow server (default: MLFLOW_TRACKING_URI, else the local stack's).")


def repo_option() -> Any:
    return typer.Option(None, "--repo", help=REPO_HELP)


def model_option(required: bool = True, also: str = "") -> Any:
    """``--model``: required, or optional where ``also`` says with what it is used."""
    return typer.Option(... if required else None, "--model", help=f"Registered model name{also}.")


def version_option() -> Any:
    return typer.Option(None, "--version", help="The model's version number (or --alias).")


def alias_option() -> Any:
    return typer.Option(None, "--alias", help="One of the model's aliases, such as champion (or --version).")


def psi_bound_option() -> Any:
    return typer.Option(PSI_BOUND, "--psi-bound", help="A feature whose PSI is above this has shifted.")


def top_option() -> Any:
    return typer.Option(10, "--top", min=0, help="Training features listed in the summary, the largest shift first.")


@contextlib.contextmanager
def quiet_command(rt, command: str, title: str, verbose: bool) -> Iterator[dict]:
    """The command's work as one quiet stage: its output (Spark's, Lightning's, the steps')
    goes to ``DFP_HOME/logs/<command>-<time>.log``, the terminal gets one line, and on failure
    the log's last lines. Yields the keys the command adds to its JSON (``log``)."""
    log = command_log(rt.settings.stack.home, command.replace(" ", "-"))
    with quiet_stage(1, 1, title, log, verbose=verbose, retry_hint=f"`dfp {command} -v` streams it"):
        yield {} if verbose else {"log": str(log)}


# ----------------------------------------------------------------------------- stack


@stack_app.command("up")
def stack_up(
    lakefs_port: Optional[int] = typer.Option(None, help="lakeFS port (env DFP_LAKEFS_PORT, default 8000)"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow port (env DFP_MLFLOW_PORT, default 5000)"),
    profile: Optional[str] = typer.Option(
        None, help="local (local KV + blockstore, SQLite) or s3 (PostgreSQL + SeaweedFS S3); env DFP_STACK_PROFILE; "
        "default: the profile DFP_HOME was set up with, else local"),
    lakefs_acl: Optional[bool] = typer.Option(
        None, "--lakefs-acl/--no-lakefs-acl",
        help="Run lakeFS's ACL server, with a pipeline user limited to the repository (env DFP_LAKEFS_ACL); "
        "fixed when DFP_HOME is first set up; default: on in the s3 profile, off in local"),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Start lakeFS and MLflow (and, for --profile s3, PostgreSQL and SeaweedFS first; with the ACL
    server, it before lakeFS); idempotent, waits until every service is healthy."""
    # Deferred (requests, psutil): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core import stack

    if profile is not None and profile not in STACK_PROFILES:
        raise DfpError(f"--profile must be one of {', '.join(STACK_PROFILES)}, got {profile!r}")
    rt = runtime(stack={"lakefs_port": lakefs_port, "mlflow_port": mlflow_port, "profile": profile,
                        "lakefs_acl": lakefs_acl})
    _print_status(stack.up(rt.settings.stack, repository=rt.settings.lakefs.repository), as_json)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `up` started; data stays in DFP_HOME."""
    # Deferred (requests, psutil): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core import stack

    emit(stack.down(runtime().settings.stack))


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Endpoints, pids, health and the credentials file."""
    # Deferred (requests, psutil): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core import stack

    _print_status(stack.status(runtime().settings.stack), as_json)


@stack_app.command("reset")
def stack_reset(yes: bool = typer.Option(False, "--yes", help="Confirm deleting all stack data.")) -> None:
    """Stop the stack and delete DFP_HOME (repositories, MLflow runs, credentials)."""
    # Deferred (requests, psutil): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core import stack

    if not yes:
        raise DfpError("reset deletes every lakeFS repository and MLflow run in DFP_HOME; pass --yes to confirm")
    settings = runtime().settings.stack
    stack.reset(settings)
    emit({"reset": str(settings.home)})


# ----------------------------------------------------------------------------- stages


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
    # Deferred (pyarrow, pandas): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.kronodroid.generator import generate

    emit(generate(out, rows, seed, layout=layout, start_year=start_year, end_year=end_year))


@app.command("transform")
@with_config(TransformConfig)
def transform_cmd(config: TransformConfig, verbose: bool = verbose_option("the transform's and Spark's output")) -> None:
    """Raw archives -> Avro Iceberg tables on a run branch, committed and merged."""
    # Deferred (the lakeFS SDK, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_spark.transform_run import run_transform

    with runtime("kronodroid-transform") as rt:
        source = config.input_dir or "the raw files already in lakeFS"
        with quiet_command(rt, "transform", f"transform {source} into lakeFS", verbose) as extra:
            result = run_transform(rt, config)
        emit({**result.to_json(), **extra})


@app.command("train")
@with_config(TrainConfig)
def train_cmd(
    config: TrainConfig,
    tracking_uri: Optional[str] = tracking_uri_option(),
    verbose: bool = verbose_option("the training's, Spark's and Lightning's output"),
) -> None:
    """Train on Feast-served splits at a lakeFS ref; log and register in MLflow."""
    # Deferred (scikit-learn, SciPy): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.train_kronodroid_autoencoder import train

    with runtime("kronodroid-train", mlflow={"tracking_uri": tracking_uri}) as rt:
        rank_zero = rt.settings.process.is_rank_zero
        # A DDP worker shares rank zero's stdout, whose last line is the run's JSON: its own goes to stderr
        # (rank zero's log, when rank zero is quiet: the workers it starts write where it does).
        out = emit if rank_zero else (
            lambda summary: print(json.dumps(summary, sort_keys=True, default=str), file=sys.stderr, flush=True))
        try:
            with quiet_command(rt, "train", "train and register the model", verbose or not rank_zero) as extra:
                result = train(rt, config)
            out({**result.to_json(), **extra})
        except DfpError as exc:
            if not rank_zero:  # rank zero's stdout is not the worker's to end
                out(getattr(exc, "summary", None) or {"status": "FAILED", "error": str(exc)})
                error(str(exc))
                raise typer.Exit(2) from None
            exc.summary = getattr(exc, "summary", None) or {"status": "FAILED"}
            raise  # main() ends stdout with the summary and the error


@feast_app.command("apply")
def feast_apply_cmd(
    repo: Optional[str] = repo_option(),
    ref: Optional[str] = typer.Option(None, "--ref", help="Branch or commit id (env LAKEFS_BRANCH, default main)."),
    snapshot_id: Optional[str] = typer.Option(None, "--snapshot-id", help="Pin an Iceberg snapshot."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Feast repo config (default: feature_store_spark.yaml)."),
) -> None:
    """`feast apply` of the KronoDroid views at a lakeFS ref, through a Spark session wired to lakeFS."""
    # Deferred (torch, Feast): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_feast.retrieval import apply_definitions

    with runtime("feast-apply", lakefs={"repository": repo, "branch": ref}) as rt:
        lakefs = rt.settings.lakefs
        rt.lakefs.resolve(lakefs.repository, lakefs.branch)  # a missing repo or ref in one line, before Feast
        emit(apply_definitions(rt.spark(), lakefs.repository, lakefs.branch, snapshot_id, config_file or FEAST_CONFIG_FILE))


# ----------------------------------------------------------------------------- pipeline


@pipeline_app.command("compile")
def pipeline_compile(
    output: Path = typer.Option(Path("kronodroid_autoencoder_pipeline.yaml"), "--output"),
    train_image: Optional[str] = typer.Option(None, "--train-image", help="Training image (default: this version's tag)."),
    spark_image: Optional[str] = typer.Option(None, "--spark-image", help="Spark image (default: this version's tag)."),
) -> None:
    """Compile the pipeline to YAML (for upload to Kubeflow Pipelines)."""
    # Deferred (KFP, the Kubernetes client): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline

    if output.is_dir():
        raise DfpError(f"--output {output} is a folder; name the YAML file to write")
    output.parent.mkdir(parents=True, exist_ok=True)
    emit({"pipeline_yaml": compile_kronodroid_autoencoder_pipeline(output, train_image, spark_image)})


def _pipeline_options() -> list[tuple[Field, str]]:
    """(field, pipeline parameter) of every config field both flagged and in the pipeline."""
    return [(f, f.param.pipeline) for cls in (TransformConfig, TrainConfig, SparkJobConfig) for f in params_of(cls)
            if f.param.cli and f.param.pipeline]


def _run_local_command(fn: Callable) -> Callable:
    """``run-local`` gets an option per pipeline parameter that a config defines."""
    options = _pipeline_options()
    own = _own_options(fn)

    @functools.wraps(fn)
    def command(**values):
        params = {}
        for fld, name in options:
            value = values.pop(name)
            if value is not None:
                params[name] = str(value) if isinstance(value, Path) else value
        return fn(params, **values)

    del command.__wrapped__
    command.__signature__ = inspect.Signature([*(_option(f, name) for f, name in options), *own])
    command.__annotations__ = {}
    return command


@pipeline_app.command("run-local")
@_run_local_command
def pipeline_run_local(
    params: dict,
    run_transform: bool = typer.Option(True, "--run-transform/--no-run-transform", help="false: train on target_branch's current head."),
    runner: str = typer.Option("subprocess", "--runner", help="subprocess (this environment) or docker (the built images)."),
    tracking_uri: Optional[str] = tracking_uri_option(),
    kubeconfig: Optional[Path] = typer.Option(
        None, "--kubeconfig", help="--runner docker with --spark-mode kubernetes: the cluster the transform step "
        "submits its SparkApplication to, as the account this kubeconfig names (env KUBECONFIG)."),
    verbose: bool = verbose_option("KFP's and the steps' output"),
) -> None:
    """Run the pipeline end to end with KFP's local runner against the local stack."""
    kubeconfig = kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    with runtime("kfp-local", mlflow={"tracking_uri": tracking_uri}) as rt:
        with quiet_command(rt, "pipeline run-local", f"pipeline with KFP's local runner ({runner})", verbose) as extra:
            result = run_pipeline_locally(rt, runner=runner, run_transform=run_transform, kubeconfig=kubeconfig,
                                          **params)
        emit({**result, **extra})


@app.command("quickstart")
def quickstart_cmd(
    input_dir: Optional[Path] = typer.Option(None, "--input", help="Real KronoDroid archives; default: a generated sample."),
    rows: int = typer.Option(4000, "--rows", min=40, help="Rows of the generated sample."),
    seed: int = typer.Option(0, "--seed"),
    max_epochs: int = typer.Option(10, "--max-epochs", min=1),
    repo: Optional[str] = repo_option(),
    verbose: bool = verbose_option("the servers', Spark's and KFP's output"),
) -> None:
    """Stack up, sample data, the whole pipeline with KFP's local runner, then where to look."""
    # Deferred (requests, psutil): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_app.quickstart import quickstart

    emit(quickstart(os.environ, input_dir=input_dir, rows=rows, seed=seed, max_epochs=max_epochs, repo=repo,
                    verbose=verbose))


@app.command("reproduce")
def reproduce_cmd(
    model: str = model_option(),
    version: Optional[str] = version_option(),
    alias: Optional[str] = alias_option(),
    retrain: bool = typer.Option(False, "--retrain", help="Also train again with the run's hyperparameters."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """Rebuild a model's exact train/val/test data from its registry tags and verify it."""
    # Deferred (10 ms of imports): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.reproduce import reproduce

    with runtime("kronodroid-reproduce", mlflow={"tracking_uri": tracking_uri}) as rt:
        report = reproduce(rt, model, version, alias, retrain=retrain)
    emit(report.to_json())
    if not report.matches:
        for difference in report.differences:
            error(f"mismatch: {difference}")
        raise typer.Exit(1)


@app.command("retarget")
def retarget_cmd(
    model: str = model_option(),
    version: Optional[str] = version_option(),
    alias: Optional[str] = alias_option(),
    target_fpr: float = typer.Option(..., "--target-fpr", help="Benign false-positive rate to set the threshold for."),
    set_alias: Optional[str] = typer.Option(None, "--set-alias", help="Point this alias at the new version."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """A new version with its threshold set for another FPR, from the stored validation scores (no training)."""
    # Deferred (torch, MLflow): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.pyfunc import operating_point_lines
    from dfp_core.ml.retarget import retarget

    with runtime("kronodroid-retarget", mlflow={"tracking_uri": tracking_uri}) as rt:
        result = retarget(rt, model, version, alias, target_fpr, set_alias)
    point = result.operating_point
    for line in operating_point_lines(point["threshold"], point["target_fpr"], point, result.score):
        note(line)
    emit(result.to_json())


@app.command("diff")
def diff_cmd(
    model: Optional[str] = model_option(required=False, also=" (with --versions)"),
    versions: Optional[tuple[str, str]] = typer.Option(None, "--versions", metavar="A B",
                                                       help="Two versions of --model, older first (a version or @alias)."),
    refs: Optional[tuple[str, str]] = typer.Option(None, "--refs", metavar="REF_A REF_B",
                                                   help="Two lakefs://repo/ref, older first (instead of --versions)."),
    psi_bound: float = psi_bound_option(),
    top: int = top_option(),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the report (report.md and its plots)."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """What changed in the data between two versions (or lakeFS refs): apps, labels, splits, families, features."""
    # Deferred (scikit-learn, matplotlib): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.diff import diff

    with runtime("kronodroid-diff", mlflow={"tracking_uri": tracking_uri}) as rt:
        summary = diff(rt, model, versions, refs, psi_bound, top, out)
    note(summary.verdict)
    emit(summary.to_json())


DRIFT_EXIT_CODE = 3  # `dfp drift --fail-on-drift` found drift (2: bad input, 1: a failure)


@app.command("drift")
def drift_cmd(
    model: str = model_option(),
    version: Optional[str] = version_option(),
    alias: Optional[str] = alias_option(),
    input_path: str = typer.Option(..., "--input", help="KronoDroid archives/CSV (file or folder), or lakefs://repo/ref"),
    psi_bound: float = psi_bound_option(),
    top: int = top_option(),
    fail_on_drift: bool = typer.Option(False, "--fail-on-drift",
                                       help=f"Exit with code {DRIFT_EXIT_CODE} when a feature shifted (a pipeline gate)."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """Whether new apps still look like a version's training data: per-feature shift and the flagged share."""
    # Deferred (pyarrow, pandas): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.drift import drift
    from dfp_core.ml.feature_drift import lines

    with runtime("kronodroid-drift", mlflow={"tracking_uri": tracking_uri}) as rt:
        summary = drift(rt, model, version, alias, input_path, psi_bound, top)
    for line in lines(summary.to_json()):
        note(line)
    emit(summary.to_json())
    if fail_on_drift and summary.drift:
        raise typer.Exit(DRIFT_EXIT_CODE)


@app.command("score")
def score_cmd(
    model_uri: str = typer.Option(..., "--model-uri", help="models:/name/version, models:/name@alias, runs:/..."),
    input_path: str = typer.Option(..., "--input", help="KronoDroid archives/CSV (file or folder), or lakefs://repo/ref"),
    out: Path = typer.Option(..., "--out", help="Output .csv or .parquet (one row per input row)."),
    explain: int = typer.Option(0, "--explain", min=0, metavar="K",
                                help="Also name the K features and each feature group that added most to each app's score."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """Score apps: reconstruction error and anomaly flag per sample; unscorable rows listed with the reason."""
    # Deferred (pyarrow, pandas): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.scoring import score, score_lakefs_ref

    with runtime("kronodroid-score", mlflow={"tracking_uri": tracking_uri}) as rt:
        if input_path.startswith("lakefs://"):
            emit(score_lakefs_ref(rt, model_uri, input_path, out, explain).to_json())
        else:
            emit(score(rt, model_uri, Path(input_path), out, explain).to_json())


@app.command("serve")
def serve_cmd(
    model_uri: str = typer.Option(..., "--model-uri", help="models:/name/version, models:/name@alias, runs:/..."),
    port: int = typer.Option(5001, "--port", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    env_manager: str = typer.Option("local", "--env-manager",
                                    help="local (this environment), or virtualenv / uv (one built from the model's requirements)."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """Serve a model over REST (MLflow's scoring server): GET /ping, POST /invocations."""
    # Deferred (8 ms of imports): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.serve import serve

    def stop(*_):  # SIGTERM stops the server like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with runtime("kronodroid-serve", mlflow={"tracking_uri": tracking_uri}) as rt:
        code = serve(rt, model_uri, os.environ, host, port, env_manager)
    emit({"model_uri": model_uri, "url": f"http://{host}:{port}", "exit_code": code})
    raise typer.Exit(code)


@app.command("kserve")
def kserve_cmd(
    model: str = model_option(),
    version: Optional[str] = version_option(),
    alias: Optional[str] = alias_option(),
    namespace: str = typer.Option("kubeflow-user", "--namespace"),
    out: Optional[Path] = typer.Option(None, "--out", help="YAML file (default inferenceservice-<name>.yaml)."),
    artifacts_destination: Optional[str] = typer.Option(
        None, "--artifacts-destination", help="The MLflow server's --artifacts-destination (e.g. s3://mlflow-artifacts)."),
    storage_uri: Optional[str] = typer.Option(None, "--storage-uri", help="Where KServe reads the model (overrides)."),
    service_account: Optional[str] = typer.Option(None, "--service-account", help="Service account with the storage credentials."),
    image: Optional[str] = typer.Option(None, "--image", help="MLServer image holding the model's requirements."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """A KServe InferenceService (MLflow runtime) for a registered model version, as YAML."""
    # Deferred (PyYAML): only the command that runs loads it (`dfp --help` takes 0.3 s).
    import yaml

    from dfp_core.ml.kserve import inference_service_for_version

    with runtime("kronodroid-kserve", mlflow={"tracking_uri": tracking_uri}) as rt:
        manifest = inference_service_for_version(rt, model, version, alias, namespace, storage_uri,
                                                 artifacts_destination, service_account, image)
    path = out or Path(f"inferenceservice-{manifest['metadata']['name']}.yaml")
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    emit({"inference_service": str(path), "name": manifest["metadata"]["name"],
          "storage_uri": manifest["spec"]["predictor"]["model"]["storageUri"]})


@runs_app.command("list")
def runs_list(
    repo: Optional[str] = repo_option(),
    older_than: str = typer.Option("24h", "--older-than", help="A run idle this long is abandoned (30m, 24h, 7d)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every run-* branch and tag with its state: active, abandoned or merged."""
    # Deferred (the lakeFS SDK, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_spark.run_refs import list_runs, parse_duration

    rt = runtime("kronodroid-runs")
    name = repo or rt.settings.lakefs.repository
    runs = list_runs(rt.lakefs, name, parse_duration(older_than))
    if not as_json:  # the table for people on stderr; the JSON line last on stdout either way
        for r in runs:
            show(f"{r.name:40s} {r.kind:6s} {r.state:9s} {r.commit_id[:12]} "
                 f"uncommitted={r.uncommitted_objects:<4d} {r.why}")
        if not runs:
            show(f"no runs in {name}")
    emit({"repository": name, "runs": [r.to_dict() for r in runs]})


@runs_app.command("gc")
def runs_gc(
    repo: Optional[str] = repo_option(),
    older_than: str = typer.Option("24h", "--older-than", help="Remove runs idle at least this long (30m, 24h, 7d)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
) -> None:
    """Remove abandoned run branches (and their uncommitted objects) and unmerged run tags.
    Merged run tags, active runs and every other ref are kept."""
    # Deferred (the lakeFS SDK, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_spark.run_refs import gc_runs, parse_duration

    rt = runtime("kronodroid-runs")
    result = gc_runs(rt.lakefs, repo or rt.settings.lakefs.repository, parse_duration(older_than), dry_run)
    for item in result.removed:
        note(f"{'would remove' if dry_run else 'removed'} {item['kind']} {item['name']} ({item['why']})")
    emit(result.to_json())
    if result.failed:
        raise DfpError(f"could not remove {len(result.failed)} run ref(s): {result.failed[0]['error']}")


@app.command("evaluate")
def evaluate_cmd(
    model: str = model_option(),
    version: Optional[str] = version_option(),
    alias: Optional[str] = alias_option(),
    time_split: bool = typer.Option(False, "--time-split", help="Train on years <= --train-end-year, report each later year."),
    train_end_year: Optional[int] = typer.Option(None, "--train-end-year"),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the evaluation to the model's training run."),
    tracking_uri: Optional[str] = tracking_uri_option(),
) -> None:
    """The version at its operating point, then vs PCA, IsolationForest and a supervised RandomForest,
    per data source (or per year)."""
    # Deferred (16 ms of imports): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.ml.evaluate_model import evaluate_model_version

    with runtime("kronodroid-evaluate", mlflow={"tracking_uri": tracking_uri}) as rt:
        result = evaluate_model_version(rt, model, version, alias, time_split, train_end_year, log)
    if result.mode == "comparison":  # the analyst's view first; the JSON line has every figure
        # Deferred (torch, MLflow): only the command that runs loads it (`dfp --help` takes 0.3 s).
        from dfp_core.ml.pyfunc import operating_point_lines

        point = result.operating_point
        for line in operating_point_lines(point["threshold"], point["target_fpr"], point, point.get("score")):
            note(line)
    emit(result.to_json())


# ----------------------------------------------------------------------------- cluster


def _node_settings():
    return NodeSettings.from_env(os.environ)


def _print_cluster(result: dict, as_json: bool) -> None:
    """A table for people on stderr (unless --json), the JSON object last on stdout."""
    if not as_json:
        for name, entry in result["components"].items():
            state = "healthy" if entry["healthy"] else ("running" if entry["running"] else "stopped")
            pid = f" pid {entry['pid']}" if entry["pid"] else ""
            show(f"{name:24s} {state:8s}{pid}")
            if entry.get("orphaned_pids"):
                show(f"  its leader is gone but pids {', '.join(map(str, entry['orphaned_pids']))} still run: "
                     "`dfp cluster down` stops them")
            if entry.get("port_taken_by"):
                show(f"  its port is held by {entry['port_taken_by']}")
        show(f"node {result['node']}: {'Ready' if result['ready'] else 'not ready'}; pods reach this host at "
             f"{result['host_address']}; kubeconfig: {result['kubeconfig']}")
    emit(result)


@cluster_app.command("up")
def cluster_up(
    images: list[str] = typer.Option([], "--image", help="A Docker image to import into the node (repeatable)."),
    spark_operator: bool = typer.Option(
        False, "--spark-operator", help="Also install the Spark Operator (its chart, webhook on) watching dfp-pipeline."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """Start the node (containerd, etcd, control plane, kubelet, kube-proxy, CoreDNS) and wait
    until it is Ready; idempotent."""
    # Deferred (cryptography, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.k8s import images as node_images
    from dfp_core.k8s import node

    settings = _node_settings()
    result = node.up(settings)
    if images:
        result["images"] = node_images.load_images(settings, images, note)
    if spark_operator:
        # Deferred (cryptography, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
        from dfp_core.k8s import spark_operator as operator

        result["spark_operator"] = operator.deploy(settings, note)
    _print_cluster(result, as_json)


@cluster_app.command("status")
def cluster_status(as_json: bool = typer.Option(False, "--json", help="Print only JSON.")) -> None:
    """Each process of the node and whether the node is Ready."""
    # Deferred (cryptography, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.k8s import node

    _print_cluster(node.status(_node_settings()), as_json)


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop what `up` started, kill the pods, remove the bridge, iptables chains and mounts (data is kept)."""
    # Deferred (cryptography, requests): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.k8s import node

    _print_cluster(node.down(_node_settings()), as_json=True)


@cluster_app.command("load-images")
def cluster_load_images(images: list[str] = typer.Argument(..., help="Docker images (e.g. dfp/kronodroid-spark:0.1.0).")) -> None:
    """Import images from the Docker engine into the node (skipped when the same image id is there)."""
    # Deferred (27 ms of imports): only the command that runs loads it (`dfp --help` takes 0.3 s).
    from dfp_core.k8s import images as node_images

    emit({"images": node_images.load_images(_node_settings(), images, note)})


def _print_status(result: dict, as_json: bool) -> None:
    """The table for people on stderr (unless --json); the JSON line last on stdout either way."""
    if not as_json:
        for name, svc in result["services"].items():
            state = "healthy" if svc["healthy"] else ("running" if svc["running"] else "stopped")
            pid = f" pid {svc['pid']}" if svc["pid"] else ""
            restarts = f" (restarted {svc['restarts']}x by the supervisor)" if svc.get("restarts") else ""
            show(f"{name:10s} {state:8s} {svc['endpoint']}{pid}{restarts}")
            if svc.get("restarting"):
                show(f"        down; the supervisor retries: {svc['restarting'].get('last_error', 'starting')}")
            if svc.get("pipeline_user"):
                show(f"        the pipeline's user: {svc['pipeline_user']} (LAKEFS_* in the credentials file)")
            if svc.get("orphaned_pids"):
                show(f"        its leader is gone but pids {', '.join(map(str, svc['orphaned_pids']))} still run: "
                     "`dfp stack down` stops them")
            if svc.get("port_taken_by"):
                holder = svc["port_taken_by"]
                show(f"        its port is held by another program: pid {holder['pid']} ({holder['cmdline']})")
        watcher = result.get("supervisor", {})
        show(f"supervisor {'running' if watcher.get('running') else 'stopped':8s} restarts a server that dies "
             f"(log: {watcher.get('log')})")
        show(f"profile: {result['profile']}, credentials: {result['credentials_file']}")
    emit(result)


def _fail(message: str, exit_code: int, summary: dict | None = None) -> None:
    """The one error line on stderr, and a JSON line naming it last on stdout."""
    error(message)
    emit({**(summary or {}), "error": message, "exit_code": exit_code})
    raise SystemExit(exit_code)


def main() -> None:
    """Every command's last stdout line is JSON, its failures' too: ``{"error", "exit_code"}``
    (with the command's own summary where it has one, e.g. a failed training's)."""
    quiet_teardown_after_exit_handlers()
    try:
        _run_and_exit()
    finally:
        leave_heap_to_the_os()


def _run_and_exit() -> None:
    try:
        code = typer.main.get_command(app).main(prog_name="dfp", standalone_mode=False)
    except DfpError as exc:
        _fail(str(exc), 2, getattr(exc, "summary", None))
    except typer.TyperException as exc:  # a usage error: typer's message, then the JSON line
        exc.show()
        emit({"error": exc.format_message(), "exit_code": exc.exit_code})
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a bug, not bad input: the traceback for the report, then the JSON line

        traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        _fail(f"unexpected {exc.__class__.__name__}: {first}", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
