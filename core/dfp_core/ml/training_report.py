"""Everything a training run logs besides its model and metrics, written in one step.

``ARTIFACTS`` is the one table of the files, by what each is, with its path under the run's
artifacts. ``write_training_report`` writes them all into one folder with those paths, and the
run logs that folder once: the fit and the evaluation write no file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfp_core.kronodroid.schema import FEATURE_COLUMNS
from dfp_core.ml.evaluation import COMPARE_PLOTS, plot_comparison
from dfp_core.ml.feature_drift import TRAINING_PROFILE, training_profile
from dfp_core.ml.retarget import BENIGN_VAL_SCORES, benign_val_record

if TYPE_CHECKING:
    from dfp_core.lineage import RetrievedDataset
    from dfp_core.ml.evaluation import Comparison
    from dfp_core.ml.fit import FitResult

# Every file the report writes, by what it is, at its path under the run's artifacts (which
# `dfp retarget`, `dfp drift` and `dfp reproduce` read back by these paths).
ARTIFACTS = {
    "loss_curves": "plots/loss_curves.png",
    "roc_curve": "plots/roc_curve.png",
    "pr_curve": "plots/pr_curve.png",
    "error_histogram": "plots/error_histogram.png",
    "comparison_table": "evaluation/comparison.csv",  # with evaluate_baselines only
    "comparison_roc": f"evaluation/{COMPARE_PLOTS[0]}",
    "comparison_pr": f"evaluation/{COMPARE_PLOTS[1]}",
    "benign_val_scores": BENIGN_VAL_SCORES,  # what `dfp retarget` sets another operating point from
    "training_profile": TRAINING_PROFILE,  # what `dfp drift` measures new apps against
    "dataset_spec": "lineage/dataset_spec.json",
    "preprocessor": "preprocessing/preprocessor.json",
}
COMPARISON = ("comparison_table", "comparison_roc", "comparison_pr")

# The x axis of the score histogram, per TrainConfig.score.
SCORE_LABELS = {"mse": "reconstruction error (per-sample MSE)",
                "error_mahalanobis": "squared Mahalanobis distance of the per-feature error vector",
                "grouped_error": "sum over feature groups of the standardised group error"}


def _json(path: Path, value: Any, **options) -> None:
    path.write_text(json.dumps(value, **options))


def write_training_report(out: Path, result: "FitResult", data: "RetrievedDataset", score: str,
                          comparison: "Comparison | None" = None) -> dict[str, Path]:
    """Every file of ``ARTIFACTS`` under ``out`` (the comparison's only with ``comparison``);
    returns them by name."""
    # Deferred (matplotlib): only to draw.
    from dfp_core.ml import plots

    paths = {name: out / rel for name, rel in ARTIFACTS.items() if comparison is not None or name not in COMPARISON}
    for folder in {p.parent for p in paths.values()}:
        folder.mkdir(parents=True, exist_ok=True)
    test_scores, test_labels = result.scores["test"], result.labels["test"]
    plots.plot_loss_curves(result.history, paths["loss_curves"])
    plots.plot_roc_pr(test_scores, test_labels, paths["roc_curve"], paths["pr_curve"], data_source=result.test_sources)
    plots.plot_error_histogram(test_scores, test_labels, result.threshold, paths["error_histogram"],
                               score_label=SCORE_LABELS[score])
    if comparison is not None:
        comparison.table.to_csv(paths["comparison_table"], index=False)
        plot_comparison(comparison.scores, comparison.labels, paths["comparison_roc"].parent)
    _json(paths["benign_val_scores"], benign_val_record(score, result.benign_val_scores), indent=2)
    _json(paths["training_profile"], training_profile(data.frames["train"], FEATURE_COLUMNS), indent=2)
    _json(paths["dataset_spec"], {"spec": asdict(data.spec), "dataset_ids": data.dataset_ids,
                                  "content_sha256": data.content_sha256, "rows": data.rows}, indent=2, sort_keys=True)
    result.preprocessor.save(paths["preprocessor"])
    return paths
