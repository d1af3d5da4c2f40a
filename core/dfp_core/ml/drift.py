"""`dfp drift`: are the apps scored today still like the ones a version was trained on?

The version's run holds its training profile (``feature_drift.TRAINING_PROFILE``) and its
benign validation scores (``retarget.BENIGN_VAL_SCORES``). A version trained before they were
kept gets them from its lineage instead: the rows its tags pin, read in Spark
(``Runtime.split_rows``, checked against the tagged commit, definitions, dataset ids and row
counts), the train split profiled from its value counts and the benign validation apps scored by
the version itself a block at a time. The input is read block by block as `dfp score` reads it
(a ``lakefs://`` ref's rows stream from Spark), counted into the profile's bins and scored by the
version (loaded from its checked copy); ``feature_drift.compare`` makes the summary. Memory stays
bounded at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd

from dfp_core.errors import ConfigError, DatasetError
from dfp_core.kronodroid.schema import FEATURE_COLUMNS
from dfp_core.ml.feature_drift import TRAINING_PROFILE, BatchCounts, compare, profile_from_value_counts
from dfp_core.params import PSI_BOUND, check_psi_bound, check_top
from dfp_core.summary import Summary

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime


def _training_baseline(rt: "Runtime", source, label: str, scorer) -> tuple[dict[str, Any], np.ndarray, str]:
    """The training profile and the benign validation scores to measure against, and where
    they came from: ``stored`` in the version's run, or ``rebuilt`` from its lineage."""
    # Deferred (MLflow, PySpark): when a drift runs, not when its summary type is imported.
    from pyspark.sql import functions as F

    from dfp_core.ml.data_diff import value_counts
    from dfp_core.ml.reproduce import compare_pinned, pinned_rows
    from dfp_core.ml.retarget import BENIGN_VAL_SCORES
    from dfp_core.ml.scoring import score_frame
    from dfp_core.spark_blocks import local_blocks
    from dfp_core.tracking.runs import run_json

    profile = run_json(rt.mlflow, source.run_id, TRAINING_PROFILE)
    benign = run_json(rt.mlflow, source.run_id, BENIGN_VAL_SCORES)
    if profile is not None and benign is not None:
        return profile, np.asarray(benign["benign_val_scores"], dtype=np.float64), "stored"
    lacks = " and ".join(what for what, record in (("training profile", profile), ("benign validation scores", benign))
                         if record is None)
    data = pinned_rows(rt, source)
    differences = compare_pinned(source, data)
    if differences:
        raise DatasetError(f"{label} has no stored {lacks}, and its data does not rebuild as its tags record it "
                           f"({'; '.join(differences)}): cannot measure drift against it")
    split = F.col("dataset_split")
    if profile is None:
        profile = profile_from_value_counts(value_counts(data.rows.where(split == "train"), FEATURE_COLUMNS))
    if benign is None:
        val = data.rows.where((split == "val") & (F.col("label") == 0)).select("sample_id", *FEATURE_COLUMNS)
        parts = [score_frame(scorer, block)["anomaly_score"].to_numpy(dtype=np.float64) for block in local_blocks(val)]
        scores = np.concatenate(parts) if parts else np.empty(0)
    else:
        scores = np.asarray(benign["benign_val_scores"], dtype=np.float64)
    return profile, scores, "rebuilt"


def _blocks(rt: "Runtime", input_path: str) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(valid, rejected) blocks of the input: archives or CSV read as `dfp score` reads them
    (the files checked now, before the slow model load), or every sample of the table at
    ``lakefs://<repo>/<ref>`` (the rows Feast serves there: its pinned snapshot's), streamed from Spark."""
    # Deferred (59 ms of imports): when a drift runs, not when its summary type is imported.
    from dfp_core.ml.scoring import lakefs_ref

    if input_path.startswith("lakefs://"):
        # Deferred (pyarrow.parquet): only a lakefs:// input streams from Spark.
        from dfp_core.spark_blocks import local_blocks

        repo, ref = lakefs_ref(input_path)
        rows = rt.split_rows(repo, ref).rows  # the ref is checked now, before the slow model load
        none_refused = pd.DataFrame({"reason": pd.Series(dtype=object)})
        return ((block, none_refused) for block in local_blocks(rows))
    # Deferred (pyarrow): when a drift runs, not when its summary type is imported.
    from dfp_core.kronodroid.reader import input_parts, iter_kronodroid

    path = Path(input_path)
    return iter_kronodroid(path, input_parts(path))


@dataclass(frozen=True)
class DriftSummary(Summary):
    """New apps against a version's training: the apps read and refused, and the comparison
    (``feature_drift.compare``: the shifted features, the flagged share, the verdict)."""

    model: str
    version: str
    input: str
    training_baseline: str  # "stored" or "rebuilt" (from lineage)
    rejected: int
    rejected_by_reason: dict[str, int]
    comparison: dict[str, Any]
    AT_THE_TOP = "comparison"  # its figures print at the top, as `dfp diff` prints its own

    @property
    def drift(self) -> bool:
        return bool(self.comparison["drift"])


def drift(rt: "Runtime", name: str, version: str | None, alias: str | None, input_path: str,
          psi_bound: float = PSI_BOUND, top: int = 10) -> DriftSummary:
    """The drift summary of the apps at ``input_path`` against a registered version's training."""
    # Deferred (95 ms of imports): when a drift runs, not when its summary type is imported.
    from dfp_core.ml.reproduce import model_lineage
    from dfp_core.ml.scoring import frame_scorer, model_target_fpr, model_threshold, score_frame
    from dfp_core.tracking.registry import load_model

    check_psi_bound(psi_bound)
    check_top(top)
    source = model_lineage(rt, name, version, alias)
    label = f"version {source.version} of {name}"
    blocks = _blocks(rt, input_path)
    model = load_model(rt, f"models:/{name}/{source.version}")
    threshold = model_threshold(model)
    if threshold is None:
        raise ConfigError(f"{label} has no anomaly threshold to measure the flagged share against")
    scorer = frame_scorer(model)
    profile, benign_val_scores, baseline = _training_baseline(rt, source, label, scorer)
    counts, scores, rejected = BatchCounts(profile), [], {}
    for valid, refused in blocks:
        if len(valid):
            counts.add(valid)
            scores.append(score_frame(scorer, valid)["anomaly_score"].to_numpy(dtype=np.float64))
        for reason, n in refused["reason"].value_counts().items():
            rejected[str(reason)] = rejected.get(str(reason), 0) + int(n)
    if counts.rows == 0:
        raise DatasetError(f"no valid app in {input_path} to measure drift on"
                           + (f" (rejected: {dict(sorted(rejected.items()))})" if rejected else ""))
    comparison = compare(profile, counts, np.concatenate(scores), benign_val_scores, threshold,
                         model_target_fpr(model), psi_bound, top)
    return DriftSummary(model=name, version=source.version, input=input_path, training_baseline=baseline,
                        rejected=sum(rejected.values()), rejected_by_reason=dict(sorted(rejected.items())),
                        comparison=comparison)
