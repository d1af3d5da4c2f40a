"""``dfp evaluate``: a registered model version at its operating point, and against
PCA, IsolationForest and a supervised RandomForest on its own (rebuilt, verified)
splits, or under a time split for concept drift; logged to the model's training run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfp_core.errors import DatasetError, DfpError
from dfp_core.ml.reproduce import compare, config_from_run, model_lineage, rebuild
from dfp_core.summary import Summary
from dfp_core.tracking.registry import load_model

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime


@dataclass(frozen=True)
class EvaluationSummary(Summary):
    """A version evaluated: at its operating point on its test split, and the methods compared
    (``mode`` "comparison") or per later year (``mode`` "time_split")."""

    model: str
    version: str
    run_id: str
    mode: str
    operating_point: dict[str, Any]
    metrics: dict[str, float]
    table: list[dict[str, Any]]  # the comparison's rows
    logged: bool


def evaluate_model_version(rt: "Runtime", name: str, version: str | None = None, alias: str | None = None,
                           time_split: bool = False, train_end_year: int | None = None,
                           log: bool = True) -> EvaluationSummary:
    """Autoencoder vs PCA / IsolationForest / RandomForest on the model's own
    (rebuilt) splits, or a time split for concept drift; logged to the model's
    training run unless ``log`` is false."""
    # Deferred (MLflow, pandas): when an evaluation runs.
    import mlflow
    import pandas as pd

    from dfp_core.ml.evaluation import LATER, compare_models, time_split_evaluation

    if time_split and train_end_year is None:
        raise DfpError("--time-split needs --train-end-year")
    model = model_lineage(rt, name, version, alias)
    data = rebuild(rt, model)
    differences = compare(model, data)
    if differences:
        raise DatasetError("the model's data cannot be rebuilt exactly: " + "; ".join(differences))
    config = config_from_run(model)
    with tempfile.TemporaryDirectory(prefix="dfp-eval-") as tmp, rt.tracking():
        plots = Path(tmp) / "plots"
        plots.mkdir()
        if time_split:
            frame = pd.concat(data.frames.values(), ignore_index=True)
            metrics, table = time_split_evaluation(frame, train_end_year, config, plots_dir=plots)
            kind = "drift"
            operating_point = {"target_fpr": float(metrics["drift_target_fpr"]),
                               "threshold": float(metrics["drift_threshold"]),
                               **{k: v for k, v in metrics.items() if k.endswith(f"__autoencoder__{LATER}")}}
        else:
            scorer = load_model(rt, f"models:/{name}/{model.version}").unwrap_python_model()
            metrics, table = compare_models(data.frames, scorer.error_score.score_function(scorer.network),
                                            scorer.preprocessor, seed=config.seed,
                                            train_on=config.train_on, plots_dir=plots)
            kind = "comparison"
            operating_point = model_operating_point(scorer, data.frames["test"])
        table_path = Path(tmp) / f"{kind}.csv"
        table.to_csv(table_path, index=False)
        if log:
            with mlflow.start_run(run_id=model.run_id):
                mlflow.log_metrics(metrics)
                mlflow.log_artifact(str(table_path), artifact_path="evaluation")
                mlflow.log_artifacts(str(plots), artifact_path="evaluation")
    return EvaluationSummary(model=name, version=model.version, run_id=model.run_id, mode=kind,
                             operating_point=operating_point, metrics=metrics, table=table.to_dict(orient="records"),
                             logged=log)


def model_operating_point(scorer: Any, test_frame) -> dict[str, Any]:
    """The version's own threshold on its test split: precision, recall, F1 and the benign
    FPR reached (overall and per data source), and the TPR of its score at 1/5/10% FPR."""
    # Deferred (scikit-learn, SciPy): when an evaluation runs.
    from dfp_core.ml.metrics import evaluate

    scored = scorer.predict(None, test_frame)
    figures = evaluate(scored["anomaly_score"].to_numpy(), test_frame["label"].to_numpy(),
                       test_frame["data_source"].to_numpy(), scorer.threshold,
                       reconstruction_errors=scored["reconstruction_error"].to_numpy())
    return {"score": scorer.error_score.kind, "target_fpr": scorer.target_fpr, **figures}
