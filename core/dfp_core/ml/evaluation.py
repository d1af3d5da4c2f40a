"""The autoencoder against classical baselines, and under concept drift.

``compare_models``: on a random split's test rows, ROC-AUC and PR-AUC of the
autoencoder's reconstruction error, PCA reconstruction error, IsolationForest
(all fit on the same training rows, benign by default) and a supervised
RandomForest (fit on every labelled training row: a ceiling), overall and per
data source.

``time_split_evaluation``: train on the years up to ``train_end_year``, then
score each later year separately; the drop of the AUCs over the years is the
drift. The autoencoder is trained by ``fit.fit_and_evaluate``, the very code of
a training run.

Both return ``(metrics, table)`` and log nothing: metric keys are valid MLflow
names (``eval_roc_auc__pca__emulator``, ``drift_pr_auc__autoencoder__2017``,
``eval_tpr_at_fpr_5pct__isolation_forest``), a key is omitted when it is
undefined (one class only), and ``table`` has one row per (method, group) where
both classes are present: ROC-AUC, PR-AUC and the TPR at 1%, 5% and 10% FPR.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from dfp_core.errors import ConfigError, DatasetError
from dfp_core.ml import baselines
from dfp_core.ml.metrics import REPORTED_FPRS, SOURCE_SEP, fpr_key, metric_key_part, tpr_at_fpr
from dfp_core.kronodroid.reader import sample_years
from dfp_core.params import TrainConfig

METHODS = ("autoencoder", "pca", "isolation_forest", "random_forest")
ALL = "all"
IN_PERIOD = "in_period"  # the held-out slice of the training years
LATER = "later"  # every year after train_end_year, pooled
COMPARE_PLOTS = ("compare_roc.png", "compare_pr.png")
DRIFT_PLOTS = ("drift_roc_auc.png", "drift_pr_auc.png")
AT_THRESHOLD = ("precision", "recall", "f1", "fpr")
TPR_COLUMNS = tuple(fpr_key(f) for f in REPORTED_FPRS)  # tpr_at_fpr_1pct, ..._5pct, ..._10pct


def _labels(frame: pd.DataFrame, name: str) -> np.ndarray:
    if "label" not in frame.columns:
        raise DatasetError(f"the {name} rows have no label column")
    y = frame["label"].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise DatasetError(f"the {name} labels must be 0 (benign) or 1 (malware)")
    return y.astype(np.int64)


def method_scores(autoencoder_score: Callable[[np.ndarray], np.ndarray], preprocessor: Any, train_frame: pd.DataFrame,
                  eval_frame: pd.DataFrame, seed: int = 0, train_on: str = "benign") -> dict[str, np.ndarray]:
    """Malware scores of ``eval_frame`` per method (higher = more malware-like).
    ``autoencoder_score`` maps preprocessed rows to the autoencoder's anomaly score
    (``ErrorScore.score_function``).

    PCA and IsolationForest are fit on the training rows the autoencoder used
    (benign ones unless ``train_on="all"``), the RandomForest on every train
    row; it is left out when the train rows have a single class.
    """
    if train_on not in ("benign", "all", "semi"):
        raise ConfigError(f"train_on must be 'benign', 'all' or 'semi', got {train_on!r}")
    train_x, train_y = preprocessor.transform(train_frame), _labels(train_frame, "train")
    eval_x = preprocessor.transform(eval_frame)
    fit_x = train_x if train_on == "all" else train_x[train_y == 0]
    if len(fit_x) == 0:
        raise DatasetError("no benign train rows to fit the unsupervised baselines on")
    scores = {
        "autoencoder": np.asarray(autoencoder_score(eval_x), dtype=np.float64),
        "pca": baselines.pca_errors(fit_x, eval_x, seed=seed),
        "isolation_forest": baselines.isolation_forest_scores(fit_x, eval_x, seed=seed),
    }
    if np.unique(train_y).size == 2:
        scores["random_forest"] = baselines.random_forest_scores(train_x, train_y, eval_x, seed=seed)
    return scores


def _auc_table(scores: Mapping[str, np.ndarray], y: np.ndarray, groups: list[tuple[Any, np.ndarray]],
               group_column: str) -> pd.DataFrame:
    rows = []
    for method, s in scores.items():
        for group, mask in groups:
            yy, ss = y[mask], s[mask]
            if np.unique(yy).size < 2:
                continue
            rows.append({
                "method": method, group_column: group,
                "roc_auc": float(roc_auc_score(yy, ss)), "pr_auc": float(average_precision_score(yy, ss)),
                **{fpr_key(f): tpr_at_fpr(ss, yy, f) for f in REPORTED_FPRS},
                "n": int(mask.sum()), "n_malware": int(yy.sum()),
            })
    columns = ["method", group_column, "roc_auc", "pr_auc", *TPR_COLUMNS, "n", "n_malware"]
    return pd.DataFrame(rows, columns=columns)


def _metrics(table: pd.DataFrame, prefix: str, group_column: str, overall: Any = None) -> dict[str, float]:
    out = {}
    for row in table.itertuples(index=False):
        group = getattr(row, group_column)
        suffix = "" if group == overall else SOURCE_SEP + metric_key_part(group)
        for name in ("roc_auc", "pr_auc", *TPR_COLUMNS):
            out[f"{prefix}_{name}{SOURCE_SEP}{row.method}{suffix}"] = float(getattr(row, name))
    return out


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The methods compared on the test rows: the metrics, the table, and what the plots draw."""

    metrics: dict[str, float]  # eval_{roc_auc,pr_auc}__<method>[__<data_source>]
    table: pd.DataFrame
    scores: dict[str, np.ndarray]  # method -> the test rows' scores
    labels: np.ndarray  # the test rows' labels


def compare(frames: Mapping[str, pd.DataFrame], autoencoder_score: Callable[[np.ndarray], np.ndarray],
            preprocessor: Any, seed: int = 0, train_on: str = "benign") -> Comparison:
    """Autoencoder vs PCA, IsolationForest and RandomForest on ``frames["test"]``,
    with the baselines fit on ``frames["train"]`` (``preprocessor`` must be the
    autoencoder's, already fitted). Metric keys ``eval_{roc_auc,pr_auc}__<method>`` and
    ``..__<method>__<data_source>``; table columns method, data_source (``"all"`` overall),
    roc_auc, pr_auc, the TPR columns, n, n_malware."""
    for split in ("train", "test"):
        if split not in frames or frames[split] is None or len(frames[split]) == 0:
            raise DatasetError(f"compare_models needs a non-empty {split!r} frame")
    test = frames["test"]
    y = _labels(test, "test")
    scores = method_scores(autoencoder_score, preprocessor, frames["train"], test, seed=seed, train_on=train_on)
    groups = [(ALL, np.ones(len(test), dtype=bool))]
    if "data_source" in test.columns:
        src = test["data_source"].astype(str).to_numpy()
        groups += [(s, src == s) for s in sorted(set(src))]
    table = _auc_table(scores, y, groups, "data_source")
    return Comparison(_metrics(table, "eval", "data_source", overall=ALL), table, dict(scores), y)


def compare_models(frames: Mapping[str, pd.DataFrame], autoencoder_score: Callable[[np.ndarray], np.ndarray],
                   preprocessor: Any, seed: int = 0,
                   train_on: str = "benign", plots_dir: Path | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """``compare`` as ``(metrics, table)``; with ``plots_dir``: ``compare_roc.png`` and
    ``compare_pr.png`` (overall curves) written there."""
    comparison = compare(frames, autoencoder_score, preprocessor, seed=seed, train_on=train_on)
    if plots_dir is not None:
        plot_comparison(comparison.scores, comparison.labels, Path(plots_dir))
    return comparison.metrics, comparison.table


def plot_comparison(scores: Mapping[str, np.ndarray], labels: np.ndarray, plots_dir: Path) -> tuple[Path, Path]:
    """ROC and precision-recall curves of every method on one pair of axes each."""
    # Deferred (matplotlib): only when plots are drawn or the time split trains.
    from dfp_core.ml.plots import _figure, _note, _save

    y = np.asarray(labels).astype(np.int64)
    fig_roc, ax_roc = _figure()
    fig_pr, ax_pr = _figure()
    if np.unique(y).size == 2:
        for method, s in scores.items():
            fpr, tpr, _ = roc_curve(y, s)
            ax_roc.plot(fpr, tpr, lw=1.5, label=f"{method} (AUC={roc_auc_score(y, s):.3f})")
            prec, rec, _ = precision_recall_curve(y, s)
            ax_pr.plot(rec, prec, lw=1.5, drawstyle="steps-post", label=f"{method} (AP={average_precision_score(y, s):.3f})")
        ax_roc.legend(loc="lower right")
        ax_pr.legend(loc="lower left")
    else:
        _note(ax_roc, "needs both benign and malware rows")
        _note(ax_pr, "needs both benign and malware rows")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC by method (test)", xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall by method (test)", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
    return _save(fig_roc, plots_dir / COMPARE_PLOTS[0]), _save(fig_pr, plots_dir / COMPARE_PLOTS[1])


def plot_drift(table: pd.DataFrame, plots_dir: Path, train_end_year: int) -> tuple[Path, Path]:
    """ROC-AUC and PR-AUC per later year, one line per method."""
    # Deferred (matplotlib): only when plots are drawn or the time split trains.
    from dfp_core.ml.plots import _figure, _note, _save

    yearly = table[table["year"].notna()]
    paths = []
    for metric, fname in zip(("roc_auc", "pr_auc"), DRIFT_PLOTS):
        fig, ax = _figure()
        if yearly.empty:
            _note(ax, "no later year has both classes")
        for method, part in yearly.groupby("method", sort=False):
            ax.plot(part["year"].astype(int), part[metric], marker="o", label=method)
        if not yearly.empty:
            ax.legend()
        ax.set(xlabel="year", ylabel=metric.replace("_", "-").upper(),
               title=f"{metric.replace('_', '-').upper()} per year, trained on years <= {train_end_year}")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, plots_dir / fname))
    return paths[0], paths[1]


def _config(config, hparams: dict):
    base = config if config is not None else TrainConfig(accelerator="cpu", devices="auto")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise ConfigError(f"unknown training option(s) for the time split: {', '.join(unknown)}")
    return dataclasses.replace(base, **hparams)


def time_split_evaluation(frame: pd.DataFrame, train_end_year: int, config=None, *, val_fraction: float = 0.1,
                          plots_dir: Path | None = None, **hparams) -> tuple[dict[str, float], pd.DataFrame]:
    """Concept-drift evaluation on one labelled frame with ``sample_year`` (or dates).

    Rows of years <= ``train_end_year`` are the training period: a seeded
    ``val_fraction`` slice of them is held out (early stopping, the threshold,
    and the ``in_period`` reference), the autoencoder is trained on the rest
    exactly as a training run does (``fit_and_evaluate``, benign rows by
    default), and the baselines are fit on the same rows. Every later year with
    both classes is then scored separately, plus all later years pooled.

    ``config``: a ``TrainConfig`` (default: its defaults on ``accelerator="cpu"``);
    ``hparams`` override its fields (``max_epochs``, ``batch_size``, ``latent_dim``,
    ``hidden_dims``, ``seed``, ``accelerator``, ...). Undated rows are ignored.

    Returns ``(metrics, table)``: keys ``drift_{roc_auc,pr_auc}__<method>__<year>``,
    ``..__in_period``, ``..__later``, plus ``drift_threshold``, ``drift_train_rows``,
    ``drift_val_rows``, ``drift_eval_rows``, ``drift_epochs_trained``, ``drift_target_fpr``
    and the autoencoder at its threshold on the later years
    (``drift_{precision,recall,f1,fpr}__autoencoder__later``); table columns
    method, period (``in_period``, ``later`` or the year), year (Int64, null for
    the two pooled groups), roc_auc, pr_auc, the TPR columns, n, n_malware. With ``plots_dir``:
    ``drift_roc_auc.png`` and ``drift_pr_auc.png``.
    """
    # Deferred (32 ms of imports): only when plots are drawn or the time split trains.
    from dfp_core.ml.fit import fit_and_evaluate

    cfg = _config(config, hparams)
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_end_year = int(train_end_year)
    years = sample_years(frame)
    dated = frame[years.notna().to_numpy()].reset_index(drop=True)
    years = years[years.notna()].astype(int).to_numpy()
    period = dated[years <= train_end_year]
    later = dated[years > train_end_year].reset_index(drop=True)
    later_years = years[years > train_end_year]
    if period.empty:
        raise DatasetError(f"no dated rows in years <= {train_end_year} to train on")
    if later.empty:
        raise DatasetError(f"no dated rows after {train_end_year} to evaluate drift on")

    rng = np.random.default_rng(cfg.seed)
    held = np.zeros(len(period), dtype=bool)
    held[rng.permutation(len(period))[: max(1, int(round(val_fraction * len(period))))]] = True
    fit_frame = period[~held].reset_index(drop=True)
    val_frame = period[held].reset_index(drop=True)

    data = SimpleNamespace(frames={"train": fit_frame, "val": val_frame, "test": later})
    with tempfile.TemporaryDirectory(prefix="dfp-drift-") as tmp:
        result = fit_and_evaluate(cfg, data, Path(tmp))

    eval_frame = pd.concat([val_frame, later], ignore_index=True)
    y = _labels(eval_frame, "evaluation")
    scores = method_scores(result.error_score.score_function(result.model), result.preprocessor,
                           fit_frame, eval_frame, seed=cfg.seed,
                           train_on=cfg.train_on)
    in_period = np.r_[np.ones(len(val_frame), dtype=bool), np.zeros(len(later), dtype=bool)]
    eval_years = np.r_[np.full(len(val_frame), -1), later_years]
    groups: list[tuple[Any, np.ndarray]] = [(IN_PERIOD, in_period)]
    groups += [(str(year), eval_years == year) for year in sorted(set(later_years.tolist()))]
    groups.append((LATER, ~in_period))
    table = _auc_table(scores, y, groups, "period")
    table.insert(2, "year", pd.array([int(p) if p.isdigit() else None for p in table["period"]], dtype="Int64"))

    metrics = _metrics(table, "drift", "period")
    metrics.update({
        "drift_train_end_year": float(train_end_year),
        "drift_threshold": float(result.threshold),
        "drift_train_rows": float(len(fit_frame)),
        "drift_val_rows": float(len(val_frame)),
        "drift_eval_rows": float(len(later)),
        "drift_epochs_trained": float(result.metrics["epochs_trained"]),
        "drift_target_fpr": float(cfg.target_fpr),
    })
    # The autoencoder at its threshold (set for the FPR target on the training years), on the later years.
    for name in AT_THRESHOLD:
        if f"test_{name}" in result.metrics:
            metrics[f"drift_{name}{SOURCE_SEP}autoencoder{SOURCE_SEP}{LATER}"] = float(result.metrics[f"test_{name}"])
    if plots_dir is not None:
        plot_drift(table, Path(plots_dir), train_end_year)
    return metrics, table
