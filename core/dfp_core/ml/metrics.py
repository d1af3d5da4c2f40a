"""Evaluation of reconstruction errors as malware scores, at an operating point.

Malware is the positive class; a row is flagged when its error is strictly
greater than the threshold. The threshold is chosen for a target benign
false-positive rate on validation (``threshold_for_fpr``); the test figures
then say what an analyst gets there: precision, recall, F1 and the benign FPR
actually reached, plus the TPR at 1%, 5% and 10% FPR of the score itself.

Keys are flat, stable and valid MLflow metric names; per-data-source metrics
carry a ``__<source>`` suffix (e.g. ``test_roc_auc__emulator``). Keys are
omitted rather than set to NaN when they are undefined: the AUCs and TPRs when
only one class is present, ``fpr`` without benign rows,
``test_recon_loss_benign``/``_malware`` when that class has no rows, and a
source's class-based keys when it has one class (its ``fpr`` is kept when it
has benign rows).
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score, roc_curve
from scipy.stats import beta

from dfp_core.errors import DatasetError

PREFIX = "test"
SOURCE_SEP = "__"


def _errors(errors, name: str = "errors") -> np.ndarray:
    arr = np.asarray(errors, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DatasetError(f"no {name}: the split is empty")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{name} contain NaN/inf values")
    return arr


def _labels(labels, n: int) -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.shape[0] != n:
        raise DatasetError(f"{n} errors but {arr.shape[0]} labels")
    if not np.isin(arr, (0, 1)).all():
        raise DatasetError("labels must be 0 (benign) or 1 (malware)")
    return arr.astype(np.int64)


def metric_key_part(value: object) -> str:
    """A data-source value made safe for an MLflow metric key."""
    return re.sub(r"[^0-9A-Za-z_\-.]", "_", str(value)) or "_"


def recon_loss(errors) -> float:
    """Mean reconstruction error of a split (e.g. ``train_recon_loss``)."""
    return float(_errors(errors).mean())


# What a result says about its operating point, beside the test_* figures.
OPERATING_POINT_KEYS = ("threshold", "target_fpr", "val_fpr", "val_benign", "fpr_95_low", "fpr_95_high")
# The false-positive rates at which every evaluation reports the TPR of the score.
REPORTED_FPRS = (0.01, 0.05, 0.10)


def fpr_key(fpr: float) -> str:
    """``tpr_at_fpr_5pct`` for 0.05: the metric name of the TPR at that FPR."""
    return f"tpr_at_fpr_{100 * float(fpr):g}pct".replace(".", "_")


def threshold_for_fpr(val_errors, val_labels, target_fpr: float) -> float:
    """The lowest threshold at which at most ``target_fpr`` of the benign validation
    errors lie strictly above it (ties never push the validation FPR over the target)."""
    if not 0.0 <= float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    errs = _errors(val_errors, "validation errors")
    benign = errs[_labels(val_labels, errs.size) == 0]
    if benign.size == 0:
        raise DatasetError("the validation split has no benign rows to set the threshold from")
    allowed = int(np.floor(float(target_fpr) * benign.size + 1e-9))  # benign rows that may be flagged
    return float(np.sort(benign)[::-1][allowed])


def threshold_fpr_interval(benign_count: int, target_fpr: float, level: float = 0.95) -> tuple[float, float]:
    """Where the benign FPR of ``threshold_for_fpr``'s threshold lies on new benign apps like
    the validation ones: the threshold is the (k+1)-th highest of ``benign_count`` benign
    scores (k = the apps allowed above it), and the share of new benign apps above that order
    statistic follows Beta(k + 1, n - k) whatever the scores' distribution. Its central
    ``level`` interval: 222 benign apps and a 1% target give about 0.3% to 3.2%."""
    n = int(benign_count)
    if n < 1:
        raise ValueError(f"need at least one benign validation app, got {benign_count}")
    k = int(np.floor(float(target_fpr) * n + 1e-9))
    tail = (1.0 - level) / 2.0
    return float(beta.ppf(tail, k + 1, n - k)), float(beta.ppf(1.0 - tail, k + 1, n - k))


def operating_point(benign_scores: np.ndarray, target_fpr: float) -> dict[str, float]:
    """The threshold for ``target_fpr`` on the benign validation scores (``threshold_for_fpr``),
    the FPR reached there, how many apps it was set on and its 95% interval on new benign apps
    (``threshold_fpr_interval``): what training logs, and what `dfp retarget` sets again."""
    benign_scores = np.asarray(benign_scores, dtype=np.float64)
    benign = np.zeros(benign_scores.size, dtype=np.int64)
    threshold = threshold_for_fpr(benign_scores, benign, target_fpr)
    low, high = threshold_fpr_interval(benign_scores.size, target_fpr)
    return {"threshold": threshold, "target_fpr": float(target_fpr),
            "val_fpr": false_positive_rate(benign_scores, benign, threshold),
            "val_benign": float(benign_scores.size), "fpr_95_low": low, "fpr_95_high": high}


def false_positive_rate(errors: np.ndarray, labels: np.ndarray, threshold: float) -> float | None:
    """The share of benign rows flagged at ``threshold`` (None without benign rows)."""
    benign = errors[labels == 0]
    return float((benign > threshold).mean()) if benign.size else None


def tpr_at_fpr(errors: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The highest TPR of the score at a benign FPR of at most ``fpr`` (both classes needed)."""
    curve_fpr, curve_tpr, _ = roc_curve(labels, errors, drop_intermediate=False)
    return float(curve_tpr[curve_fpr <= float(fpr) + 1e-12].max())


def classification_metrics(errors: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """roc_auc, pr_auc and the TPR at each reported FPR (only with both classes);
    precision, recall, f1 and the benign fpr (with benign rows) at the threshold."""
    pred = (errors > threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, average="binary", pos_label=1, zero_division=0
    )
    out: dict[str, float] = {}
    if np.unique(labels).size == 2:
        out["roc_auc"] = float(roc_auc_score(labels, errors))
        out["pr_auc"] = float(average_precision_score(labels, errors, pos_label=1))
        out.update({fpr_key(f): tpr_at_fpr(errors, labels, f) for f in REPORTED_FPRS})
    out.update(precision=float(precision), recall=float(recall), f1=float(f1))
    fpr = false_positive_rate(errors, labels, threshold)
    if fpr is not None:
        out["fpr"] = fpr
    return out


def evaluate(
    errors: np.ndarray,
    labels: np.ndarray,
    data_source: np.ndarray | None,
    threshold: float,
    prefix: str = PREFIX,
    reconstruction_errors: np.ndarray | None = None,
) -> dict[str, float]:
    """Flat metric dict for a labelled split (see the module docstring for the keys).
    ``errors`` are the scores thresholded; the ``recon_loss`` keys are the means of
    ``reconstruction_errors`` (default: the scores, which they are for the MSE score)."""
    errs = _errors(errors)
    y = _labels(labels, errs.size)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise DatasetError("the threshold must be a finite number")

    recon = errs if reconstruction_errors is None else _errors(reconstruction_errors, "reconstruction errors")
    if recon.size != errs.size:
        raise DatasetError(f"{errs.size} scores but {recon.size} reconstruction errors")
    out: dict[str, float] = {f"{prefix}_recon_loss": float(recon.mean())}
    for cls, name in ((0, "benign"), (1, "malware")):
        if (y == cls).any():
            out[f"{prefix}_recon_loss_{name}"] = float(recon[y == cls].mean())
    out.update({f"{prefix}_{k}": v for k, v in classification_metrics(errs, y, threshold).items()})
    out["threshold"] = threshold

    if data_source is not None:
        src = np.asarray(data_source, dtype=object).reshape(-1)
        if src.shape[0] != errs.size:
            raise DatasetError(f"{errs.size} errors but {src.shape[0]} data_source values")
        src = src.astype(str)
        for source in sorted(set(src)):
            mask = src == source
            part = metric_key_part(source)
            if np.unique(y[mask]).size < 2:
                # AUC/PR undefined and F1 of one class misleading; the benign FPR still counts.
                fpr = false_positive_rate(errs[mask], y[mask], threshold)
                if fpr is not None:
                    out[f"{prefix}_fpr{SOURCE_SEP}{part}"] = fpr
                continue
            for key, value in classification_metrics(errs[mask], y[mask], threshold).items():
                out[f"{prefix}_{key}{SOURCE_SEP}{part}"] = value
    return out
