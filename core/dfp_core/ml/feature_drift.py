"""Feature and score drift of a batch of apps against a version's training (`dfp drift`'s measures, no I/O).

Training keeps a profile of its train split (``TRAINING_PROFILE`` in its run): for every
feature, bin edges at the split's deciles (repeated edges merged, so a mostly-zero syscall
count gets few bins), the count of training apps in each bin, the missing values and the mean.
A batch of new apps is counted into the same bins, one block at a time, so memory does not
grow with the batch. Every feature is measured the same way:

- PSI (population stability index) over the bins and the missing values, each share
  smoothed by half an app so an empty bin has a finite term. The usual reading: below 0.1
  stable, 0.1 to 0.25 a moderate shift, above 0.25 a major one (the default bound).
  A small batch has a PSI above zero from sampling alone, about ``(bins - 1) * (1/n + 1/N)``
  (n, N the batch's and the split's apps): the summary gives that noise floor.
- KS: the largest gap between the two distribution functions at the bin edges, a lower
  bound of the exact two-sample KS statistic.

The scores are compared with the benign validation apps' scores training kept
(``BENIGN_VAL_SCORES``): the share of the batch above the threshold against the benign
validation share and the target FPR, and the exact two-sample KS of the two score sets. A
batch holds malware too, so a share above the target is expected; far above says the operating
point has moved or the feed holds more malware than before.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from dfp_core.errors import DatasetError
from dfp_core.params import PSI_BOUND
from dfp_core.kronodroid.schema import GROUP_OF

TRAINING_PROFILE = "drift/training_profile.json"
PROFILE_VERSION = 1
DECILES = tuple(np.round(np.arange(0.1, 1.0, 0.1), 1))
SMOOTHING = 0.5  # apps added to every bin's count before shares are taken


# --------------------------------------------------------------------------- the profile


def training_profile(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, Any]:
    """The profile of ``frame``'s ``features`` (a train split, every label): per feature its
    decile edges, the apps per bin (``len(edges) + 1`` bins, right-closed), missing and mean."""
    if frame.empty:
        raise DatasetError("cannot profile an empty train split")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DatasetError(f"the train split lacks feature column(s): {', '.join(missing[:5])}")
    profile = {}
    for feature in features:
        values, present = _values(frame, feature)
        profile[feature] = _feature_profile(present, len(values) - len(present))
    return {"version": PROFILE_VERSION, "rows": int(len(frame)), "features": profile}


def _feature_profile(present: np.ndarray, missing: int) -> dict[str, Any]:
    edges = np.unique(np.quantile(present, DECILES)) if len(present) else np.array([0.0])
    return {"edges": edges.tolist(), "counts": bin_counts(present, edges).tolist(), "missing": int(missing),
            "mean": float(present.mean()) if len(present) else None}


def profile_from_value_counts(counts: "FeatureValueCounts") -> dict[str, Any]:
    """``training_profile`` of a split given as its features' value counts (``FeatureValueCounts``,
    counted in Spark): the same edges and counts, one feature's values in memory at a time."""
    if counts.rows == 0:
        raise DatasetError("cannot profile an empty train split")
    profile = {f: _feature_profile(np.repeat(values, n), counts.missing[f])
               for f, (values, n) in counts.values.items()}
    return {"version": PROFILE_VERSION, "rows": counts.rows, "features": profile}


class FeatureValueCounts:
    """A split's features as their distinct values and how many apps have each (sorted, missing
    values apart): what Spark hands back instead of the rows."""

    def __init__(self, rows: int, features: Sequence[str]):
        self.rows = rows
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {
            f: (np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)) for f in features}
        self.missing = dict.fromkeys(features, 0)

    @classmethod
    def from_table(cls, table: pd.DataFrame, rows: int, features: Sequence[str]) -> "FeatureValueCounts":
        """From (``feature`` index into ``features``, ``value``: NaN when missing, ``count``) rows."""
        result = cls(rows, features)
        for index, part in table.groupby("feature", sort=True):
            feature = features[int(index)]
            values = part["value"].to_numpy(dtype=np.float64)
            counts = part["count"].to_numpy(dtype=np.int64)
            present = ~np.isnan(values)
            order = np.argsort(values[present], kind="stable")
            result.values[feature] = (values[present][order], counts[present][order])
            result.missing[feature] = int(counts[~present].sum())
        return result


def _values(frame: pd.DataFrame, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """A feature's values as float64 (missing: NaN), and those that are not missing."""
    values = frame[feature].to_numpy(dtype=np.float64, na_value=np.nan)
    return values, values[~np.isnan(values)]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Apps per bin of ``edges`` (right-closed: bin i holds edges[i-1] < x <= edges[i]; the
    last holds everything above the last edge). ``values`` without missing ones."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


class BatchCounts:
    """A batch counted into a profile's bins, block by block."""

    def __init__(self, profile: Mapping[str, Any]):
        self.profile = profile
        self.features = list(profile["features"])
        self.edges = {f: np.asarray(p["edges"], dtype=np.float64) for f, p in profile["features"].items()}
        self.counts = {f: np.zeros(len(e) + 1, dtype=np.int64) for f, e in self.edges.items()}
        self.missing = dict.fromkeys(self.features, 0)
        self.sums = dict.fromkeys(self.features, 0.0)
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        absent = [f for f in self.features if f not in frame.columns]
        if absent:
            raise DatasetError(f"the input lacks feature column(s) the profile has: {', '.join(absent[:5])}")
        for feature in self.features:
            values, present = _values(frame, feature)
            self.counts[feature] += bin_counts(present, self.edges[feature])
            self.missing[feature] += int(len(values) - len(present))
            self.sums[feature] += float(present.sum())
        self.rows += len(frame)

    def add_value_counts(self, counts: FeatureValueCounts) -> None:
        """Count a whole split given as its value counts (``FeatureValueCounts``), as ``add`` counts rows."""
        absent = [f for f in self.features if f not in counts.values]
        if absent:
            raise DatasetError(f"the input lacks feature column(s) the profile has: {', '.join(absent[:5])}")
        for feature in self.features:
            values, n = counts.values[feature]
            index = np.searchsorted(self.edges[feature], values, side="left")
            self.counts[feature] += np.bincount(index, weights=n, minlength=len(self.edges[feature]) + 1).astype(np.int64)
            self.missing[feature] += counts.missing[feature]
            self.sums[feature] += float(np.dot(values, n))
        self.rows += counts.rows

    def mean(self, feature: str) -> float | None:
        present = self.rows - self.missing[feature]
        return self.sums[feature] / present if present else None


# --------------------------------------------------------------------------- the measures


def _shares(counts: np.ndarray) -> np.ndarray:
    smoothed = counts.astype(np.float64) + SMOOTHING
    return smoothed / smoothed.sum()


def psi(reference: Sequence[int], batch: Sequence[int]) -> float:
    """The population stability index of two count vectors over the same bins."""
    p, q = _shares(np.asarray(reference)), _shares(np.asarray(batch))
    return float(np.sum((q - p) * np.log(q / p)))


def ks_binned(reference: Sequence[int], batch: Sequence[int]) -> float:
    """The largest gap between the two distribution functions at the bin edges."""
    reference, batch = np.asarray(reference, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    if reference.sum() == 0 or batch.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(reference) / reference.sum() - np.cumsum(batch) / batch.sum())))


def psi_noise_floor(bins: int, batch_rows: int, reference_rows: int) -> float:
    """PSI's expected value between two samples of one distribution over ``bins`` bins (its
    chi-square approximation): what a batch this small shows with no shift at all."""
    if batch_rows <= 0 or reference_rows <= 0:
        return float("inf")
    return (bins - 1) * (1.0 / batch_rows + 1.0 / reference_rows)


def feature_shift(profile: Mapping[str, Any], counts: BatchCounts) -> list[dict[str, Any]]:
    """Every feature's PSI and binned KS, with its feature group, the largest PSI first."""
    rows = []
    for feature, ref in profile["features"].items():
        reference = np.append(ref["counts"], ref["missing"])
        batch = np.append(counts.counts[feature], counts.missing[feature])
        rows.append({
            "feature": feature, "group": GROUP_OF.get(feature), "psi": round(psi(reference, batch), 6),
            "ks": round(ks_binned(ref["counts"], counts.counts[feature]), 6),
            "train_mean": ref["mean"], "input_mean": counts.mean(feature),
        })
    return sorted(rows, key=lambda r: (-r["psi"], r["feature"]))


def score_shift(benign_val_scores: Sequence[float], scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """The batch's scores against the benign validation apps': the shares above the threshold,
    quantiles and the exact two-sample KS statistic."""
    # Deferred (SciPy): only the score shift's KS test.
    from scipy.stats import ks_2samp

    benign = np.asarray(benign_val_scores, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        raise DatasetError("no app of the input could be scored")
    quantiles = (0.5, 0.9, 0.99)
    return {
        "flagged_share": float(np.mean(scores > threshold)),
        "benign_val_flagged_share": float(np.mean(benign > threshold)) if len(benign) else None,
        "score_ks": float(ks_2samp(scores, benign).statistic) if len(benign) else None,
        "score_quantiles": {f"p{round(q * 100)}": float(np.quantile(scores, q)) for q in quantiles},
        "benign_val_score_quantiles": {f"p{round(q * 100)}": float(np.quantile(benign, q)) for q in quantiles}
        if len(benign) else None,
    }


def verdict(shifted: int, features: int, psi_bound: float, scores: Mapping[str, Any], target_fpr: float | None,
            rows: int) -> str:
    """One line a person reads first."""
    benign = scores.get("benign_val_flagged_share")
    against = f"benign validation {benign:.1%}" if benign is not None else "no benign validation scores"
    if target_fpr is not None:
        against += f", target {target_fpr:.1%}"
    return (f"{shifted} of {features} features shifted beyond PSI {psi_bound:g}; "
            f"{scores['flagged_share']:.1%} of {rows} apps above the threshold ({against})")


def compare(profile: Mapping[str, Any], counts: BatchCounts, scores: np.ndarray, benign_val_scores: Sequence[float],
            threshold: float, target_fpr: float | None, psi_bound: float = PSI_BOUND, top: int = 10) -> dict[str, Any]:
    """The drift summary of a counted and scored batch (no I/O)."""
    shifts = feature_shift(profile, counts)
    shifted = [s for s in shifts if s["psi"] > psi_bound]
    by_group: dict[str, int] = {}
    for s in shifted:
        by_group[s["group"]] = by_group.get(s["group"], 0) + 1
    bins = max(len(p["edges"]) + 2 for p in profile["features"].values())  # with the missing values
    score_figures = score_shift(benign_val_scores, scores, threshold)
    return {
        "rows": counts.rows, "train_rows": profile["rows"], "psi_bound": psi_bound,
        "psi_noise_floor": round(psi_noise_floor(bins, counts.rows, profile["rows"]), 6),
        "features_shifted": len(shifted), "features": len(shifts), "shifted_by_group": dict(sorted(by_group.items())),
        "top_features": shifts[:top], "threshold": threshold, "target_fpr": target_fpr, **score_figures,
        "drift": bool(shifted),
        "verdict": verdict(len(shifted), len(shifts), psi_bound, score_figures, target_fpr, counts.rows),
    }


def lines(summary: Mapping[str, Any], shown: int = 5) -> Iterable[str]:
    """What a person reads on stderr: the verdict, the noise floor when it matters, the top shifts."""
    yield summary["verdict"]
    if summary.get("training_baseline") == "rebuilt":
        yield ("the version's run did not keep what drift measures against: its training and benign "
               "validation apps were rebuilt from its lineage and measured now")
    if summary["psi_noise_floor"] > summary["psi_bound"] / 2:
        yield (f"only {summary['rows']} apps: a PSI near {summary['psi_noise_floor']:.2f} is sampling noise "
               "at this size; score a bigger batch for a firmer answer")
    for s in summary["top_features"][:shown]:
        if s["psi"] <= 0.1:
            break
        yield f"  {s['feature']} ({s['group']}): PSI {s['psi']:.2f}, KS {s['ks']:.2f}"
