"""Train, validate and test the KronoDroid autoencoder on Feast-served splits
of a lakeFS-pinned Iceberg table; log to MLflow and register the model with
its data lineage.

Flow: resolve the ref to a commit -> one Feast historical retrieval of the
three splits -> ``fit.fit_and_evaluate`` (preprocessing fitted on the training
rows, Lightning fit with early stopping, threshold for the target benign FPR on
validation, test metrics at that operating point) -> MLflow params, per-epoch metrics, the report
(``training_report``: plots and the files the other commands read back), pyfunc model,
registry version with the nine lineage tags (on the run too).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfp_core import lineage
from dfp_core.kronodroid import schema
from dfp_core.ml.fit import fit_and_evaluate
from dfp_core.ml.metrics import OPERATING_POINT_KEYS
from dfp_core.ml.training_report import write_training_report
from dfp_core.errors import DfpError, TrackingError
from dfp_core.params import TrainConfig
from dfp_core.progress import note, stage
from dfp_core.summary import Summary
from dfp_core.version import execution_tags
from dfp_core.ml.evaluation import compare
from dfp_core.tracking.integrity import MODEL_DIGEST_TAG, record_model_digest
from dfp_core.tracking.registry import register_with_lineage

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

TRAIN_STAGES = 5


def _lakefs_uri(spec: lineage.DatasetSpec) -> str:
    path = "iceberg/" + spec.source_table.replace(".", "/")
    return f"lakefs://{spec.lakefs_repository}/{spec.lakefs_commit}/{path}"


def lineage_tags(data) -> dict[str, str]:
    """The nine tags (exact names) that pin the data a model saw."""
    spec = data.spec
    return {
        lineage.TAG_REPOSITORY: spec.lakefs_repository,
        lineage.TAG_REF: spec.lakefs_commit,
        lineage.TAG_SOURCE_TABLE: spec.source_table,
        lineage.TAG_SNAPSHOT: spec.iceberg_snapshot_id,
        lineage.TAG_FEATURE_VIEW: spec.feature_view,
        lineage.TAG_DEFS_SHA: spec.feast_defs_sha256,
        lineage.TAG_TRAIN_ID: data.dataset_ids["train"],
        lineage.TAG_VAL_ID: data.dataset_ids["val"],
        lineage.TAG_TEST_ID: data.dataset_ids["test"],
    }


def rebuild_tags(data) -> dict[str, str]:
    """Beside the nine: what else a rebuild needs to verify itself."""
    tags = {
        lineage.TAG_SPLIT_SPEC: json.dumps(data.spec.split_spec, sort_keys=True),
        lineage.TAG_MAX_ROWS: str(data.spec.max_rows_per_split),
    }
    for split in ("train", "val", "test"):
        tags[lineage.CONTENT_TAGS[split]] = data.content_sha256[split]
        tags[lineage.ROWS_TAGS[split]] = str(data.rows[split])
    return tags


def _epoch_metrics_logger_class():
    # Deferred (Lightning): when training runs, not when its summary type is imported.
    from lightning.pytorch.loggers import MLFlowLogger

    class EpochMetricsLogger(MLFlowLogger):
        """Lightning's MLflow logger for per-epoch metrics only: the run's
        params are logged once by ``train`` (MLflow refuses re-logging a param)."""

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            return None

    return EpochMetricsLogger


@dataclass(frozen=True)
class TrainSummary(Summary):
    """A finished training run: its MLflow run and model (``model_version`` None when not
    registered), the lineage tags, the rows and content hashes of the splits, the test metrics."""

    run_id: str
    experiment_id: str
    model_name: str
    model_version: str | None
    model_alias: str | None
    model_uri: str
    lineage_tags: dict[str, str]
    dataset_rows: dict[str, int]
    content_sha256: dict[str, str]
    test_metrics: dict[str, float]
    epochs_trained: int
    tracking_uri: str


@dataclass(frozen=True)
class WorkerSummary(Summary):
    """A DDP process other than rank zero: it fitted, and rank zero did the rest."""

    rank: int
    epochs_trained: int
    lakefs_commit: str
    status: str = "DDP_WORKER_DONE"


class TrainingFailed(TrackingError):
    """A training run that could not finish: its MLflow run is marked FAILED (when the
    server lets us), and no model version was created. ``summary`` is the JSON line."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), exc.__class__.__name__)
    return first if isinstance(exc, DfpError) else f"{exc.__class__.__name__}: {first}"[:500]


def _mark_failed(rt: "Runtime", run_id: str) -> str | None:
    """Set the run's status to FAILED (MLflow's client retries while the server restarts);
    the reason it could not, or None."""
    try:
        run = rt.mlflow.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            rt.mlflow.set_terminated(run_id, status="FAILED")
        return None
    except Exception as exc:  # noqa: BLE001 - the training failure is what we report
        return _one_line(exc)


def train(rt: "Runtime", config: TrainConfig) -> TrainSummary | WorkerSummary:
    """The whole training run; returns its summary. A run that cannot
    finish raises ``TrainingFailed`` (one line, the run marked FAILED)."""
    # Deferred (MLflow): when training runs, not when its summary type is imported.
    import mlflow

    config = config.resolved(rt.settings)
    if not rt.settings.process.is_rank_zero:
        return _train_worker(rt, config)
    tracking_uri = rt.settings.mlflow.tracking_uri
    EpochMetricsLogger = _epoch_metrics_logger_class()
    started: dict[str, str] = {}
    with rt.tracking():
        try:
            return _train(rt, config, mlflow, EpochMetricsLogger, tracking_uri, started)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            run_id = started.get("run_id")
            cause = _one_line(exc)
            summary: dict[str, Any] = {"status": "FAILED", "run_id": run_id, "model_name": config.model_name,
                                       "model_version": None, "error": cause, "tracking_uri": tracking_uri}
            unmarked = _mark_failed(rt, run_id) if run_id else None
            if unmarked:
                summary["status_not_recorded"] = unmarked
            if isinstance(exc, DfpError):  # already one line naming the cause; keep its type
                exc.summary = summary
                raise
            if run_id is None:
                raise TrainingFailed(f"training failed before its MLflow run started: {cause}", summary) from exc
            where = f"run {run_id} marked FAILED" if not unmarked else f"run {run_id} left as it was ({unmarked})"
            raise TrainingFailed(f"training failed, no model version registered ({where}): {cause}", summary) from exc


def _train_worker(rt: "Runtime", config: TrainConfig) -> WorkerSummary:
    """A DDP process other than rank zero (started by Lightning's launcher, torchrun or a
    PyTorchJob): the same pinned splits and the same fit, and nothing else: rank zero owns
    the MLflow run, the evaluation and the registration."""
    rank = rt.settings.process.rank
    with stage(1, 2, f"rank {rank}: Feast retrieval at lakefs://{config.repo}/{config.ref}"):
        data = rt.retrieve_splits(config.repo, config.ref, config.snapshot_id, config.max_rows_per_split)
    with tempfile.TemporaryDirectory(prefix="dfp-train-") as tmp, \
            stage(2, 2, f"rank {rank}: Lightning fit (max {config.max_epochs} epochs, {config.accelerator})"):
        result = fit_and_evaluate(config, data, Path(tmp))
    return WorkerSummary(rank=rank, epochs_trained=int(result.epochs_trained), lakefs_commit=data.spec.lakefs_commit)


def _train(rt: "Runtime", config: TrainConfig, mlflow, EpochMetricsLogger, tracking_uri: str,
           started: dict[str, str]) -> TrainSummary:
    # Deferred (torch, MLflow): when training runs, not when its summary type is imported.
    from dfp_core.ml.pyfunc import as_model_input, log_scorer_model, model_description
    from dfp_core.tracking.runs import LakeFSDatasetSource, SplitDataset

    with stage(1, TRAIN_STAGES, f"MLflow at {tracking_uri}"):
        experiment = mlflow.set_experiment(config.experiment_name)
    with stage(2, TRAIN_STAGES, f"Feast retrieval at lakefs://{config.repo}/{config.ref}"):
        data = rt.retrieve_splits(config.repo, config.ref, config.snapshot_id, config.max_rows_per_split)
        note(f"commit {data.spec.lakefs_commit[:12]}, snapshot {data.spec.iceberg_snapshot_id}, rows {data.rows}")
    tags = lineage_tags(data)

    with tempfile.TemporaryDirectory(prefix="dfp-train-") as tmp, mlflow.start_run(
        experiment_id=experiment.experiment_id,
        tags={**tags, **rebuild_tags(data), **execution_tags(), **config.extra_tags},
    ) as run:
        started["run_id"] = run.info.run_id
        workdir = Path(tmp)
        mlflow.log_params({**config.to_params(), "resolved_commit": data.spec.lakefs_commit,
                           "resolved_snapshot_id": data.spec.iceberg_snapshot_id})
        source = LakeFSDatasetSource(_lakefs_uri(data.spec))
        for split, frame in data.frames.items():
            dataset = SplitDataset(frame, schema.FEATURE_COLUMNS, source, name=f"kronodroid_{split}",
                                   digest=data.content_sha256[split][:32])
            mlflow.log_input(dataset, context=split, tags={"dataset_id": data.dataset_ids[split]})
        with stage(3, TRAIN_STAGES, f"Lightning fit (max {config.max_epochs} epochs, {config.accelerator})"):
            epoch_logger = EpochMetricsLogger(tracking_uri=tracking_uri, run_id=run.info.run_id, log_model=False)
            result = fit_and_evaluate(config, data, workdir, logger=epoch_logger)
            mlflow.set_tag("dfp.world_size", str(result.trainer.world_size))  # processes that fitted
        with stage(4, TRAIN_STAGES, "test metrics, baselines, plots, model"):
            mlflow.log_metrics(result.metrics)
            comparison = None
            if config.evaluate_baselines:
                comparison = compare(data.frames, result.error_score.score_function(result.model), result.preprocessor,
                                     seed=config.seed, train_on=config.train_on)
                mlflow.log_metrics(comparison.metrics)
                result.metrics.update(comparison.metrics)
            report = workdir / "report"
            write_training_report(report, result, data, config.score, comparison)
            mlflow.log_artifacts(str(report))
            example = as_model_input(data.frames["test"].head(5))
            model_info = log_scorer_model(result.model, result.preprocessor, result.error_score, result.threshold,
                                          config.target_fpr, example, workdir / "model")
            model_digest = record_model_digest(model_info.model_uri, rt.settings.mlflow.signing_key_text())
            mlflow.set_tag(MODEL_DIGEST_TAG, model_digest)
        version = None
        with stage(5, TRAIN_STAGES, f"Model Registry: {config.model_name}"):
            if config.register:
                description = model_description(config.score, result.threshold, config.target_fpr,
                                                result.metrics, score_detail=result.error_score.described())
                version = register_with_lineage(rt.mlflow, model_info.model_uri, config.model_name,
                                                {**tags, MODEL_DIGEST_TAG: model_digest}, config.model_alias, description)
                note(f"registered {config.model_name} version {version} (alias {config.model_alias})")
    test_metrics = {k: v for k, v in result.metrics.items() if k.startswith(("test_", "eval_")) or k in OPERATING_POINT_KEYS}
    return TrainSummary(
        run_id=run.info.run_id, experiment_id=experiment.experiment_id, model_name=config.model_name,
        model_version=version, model_alias=config.model_alias if version else None, model_uri=model_info.model_uri,
        lineage_tags=tags, dataset_rows=data.rows, content_sha256=data.content_sha256, test_metrics=test_metrics,
        epochs_trained=int(result.metrics["epochs_trained"]), tracking_uri=tracking_uri,
    )
