"""`dfp diff`: what is different in the data behind two registered versions, or at two lakeFS refs.

A version's data is the rows its lineage tags pin, as `dfp reproduce` rebuilds them (the tagged
commit, Iceberg snapshot, view and subset); a ref's is what Feast serves there. Both are read in
Spark (``Runtime.split_rows``), never collected: ``data_diff.compare`` compares the splits with
Spark's joins and counts, and the scores stream the test apps through the models a block at a
time, so memory stays bounded at any size. Beside it: each side's quarantine counts by
reason (the transform run's commit metadata), the lakeFS commits from the older side to the newer
and the raw objects that changed (lakeFS's log and diff), whether the feature definitions differ,
and for two versions the hyperparameters that differ and both versions' scores on the newer one's
test apps. ``diff_report`` writes it for a person: markdown and plots.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfp_core import lineage
from dfp_core.errors import ConfigError, DatasetError, DfpError, listed
from dfp_core.kronodroid.raw_files import RAW_PREFIX
from dfp_core.ml.data_diff import compare, differing, verdict
from dfp_core.ml.diff_report import REPORT, write_report
from dfp_core.ml.reproduce import compare_pinned, model_lineage, pinned_rows
from dfp_core.ml.scoring import frame_scorer, lakefs_ref, model_threshold, score_frame
from dfp_core.params import PSI_BOUND, check_psi_bound, check_top
from dfp_core.spark_blocks import local_blocks
from dfp_core.summary import Summary
from dfp_core.tracking.registry import load_model

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

LISTED = 1000  # lakeFS commits and raw changes listed at most ("truncated" says when more exist)
REPORT_ARTIFACTS = "diff"  # on the newer version's run: diff/<older>-<newer>/report.md and its plots
# Params that name the data rather than the training: the data part of the diff covers them.
DATA_PARAMS = ("resolved_commit", "resolved_snapshot_id")


@dataclass
class Side:
    label: str  # "version 3 of NAME" or "lakefs://repo/ref"
    repository: str
    commit: str
    snapshot_id: str
    defs_sha256: str
    params: dict[str, str] | None  # a version's run params; None for a ref
    data: lineage.PinnedRows
    version: str | None = None  # a registered version's number, its run
    run_id: str | None = None

    def info(self) -> dict[str, Any]:
        return {"data": self.label, "repository": self.repository, "commit": self.commit,
                "iceberg_snapshot_id": self.snapshot_id, "rows": dict(self.data.counts)}


def _version_side(rt: "Runtime", model) -> Side:
    label = f"version {model.version} of {model.name}"
    try:
        data = pinned_rows(rt, model)
    except DfpError as exc:
        raise DatasetError(f"{label}: its data cannot be rebuilt: {exc}") from None
    # Other feature definitions are compared on the shared features; other rows than the tags
    # record would make the diff about data the version never saw.
    differences = compare_pinned(model, data, definitions=False)
    if differences:
        raise DatasetError(f"{label}: its data does not rebuild as its tags record it: {'; '.join(differences)}")
    return Side(label, model.tags[lineage.TAG_REPOSITORY], data.spec.lakefs_commit, str(data.spec.iceberg_snapshot_id),
                model.tags[lineage.TAG_DEFS_SHA], model.params, data, model.version, model.run_id)


def _ref_side(rt: "Runtime", uri: str) -> Side:
    repo, ref = lakefs_ref(uri)
    try:
        data = rt.split_rows(repo, ref)
    except DfpError as exc:
        raise DatasetError(f"{uri}: its data cannot be read: {exc}") from None
    return Side(uri, repo, data.spec.lakefs_commit, str(data.spec.iceberg_snapshot_id), data.spec.feast_defs_sha256,
                None, data)


def _quarantine(rt: "Runtime", side: Side) -> dict[str, int] | None:
    """Rows the transform run behind the side's commit quarantined, by reason; None when the
    commit is not a transform's merge."""
    run_commit = rt.lakefs.commit_metadata(side.repository, side.commit).get("dfp.run_commit")
    if not run_commit:
        return None
    reasons = rt.lakefs.commit_metadata(side.repository, run_commit).get("dfp.quarantine_by_reason")
    return {k: int(v) for k, v in sorted(json.loads(reasons).items())} if reasons else None


def _history(rt: "Runtime", older: Side, newer: Side) -> dict[str, Any]:
    if older.repository != newer.repository:
        return {"same_repository": False, "commits": None, "raw_changes": None}
    commits = rt.lakefs.commits_between(newer.repository, older.commit, newer.commit, limit=LISTED)
    changes = rt.lakefs.changed_objects(newer.repository, older.commit, newer.commit, prefix=RAW_PREFIX, limit=LISTED)
    return {"same_repository": True, "commits": commits, "raw_changes": changes,
            "truncated": len(commits) >= LISTED or len(changes) >= LISTED}


def _scores_on_the_same_apps(rt: "Runtime", name: str, older: Side, newer: Side) -> tuple[dict, dict, dict]:
    """Both versions' scores on the newer version's test apps: (figures, scores, thresholds) by side.
    The test apps stream from Spark a block at a time; only the scores are kept."""
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark.sql import functions as F

    sides = {"older": older, "newer": newer}
    models = {key: load_model(rt, f"models:/{name}/{side.version}") for key, side in sides.items()}
    inputs = [model.metadata.get_input_schema() for model in models.values()]  # None: a model without a signature
    needed = {c for schema in inputs if schema is not None for c in schema.input_names()} - {"sample_id"}
    lacking = sorted(needed - set(newer.data.features))
    if lacking:  # a version of other feature definitions: its model takes columns these rows lack
        return {"not_compared": f"the newer test apps lack features a version takes: {listed(lacking)}"}, None, None
    scorers = {key: frame_scorer(model) for key, model in models.items()}
    parts: dict[str, list[np.ndarray]] = {key: [] for key in sides}
    test = newer.data.rows.where(F.col("dataset_split") == "test").select("sample_id", *newer.data.features)
    for block in local_blocks(test):
        for key, scorer in scorers.items():
            parts[key].append(score_frame(scorer, block)["anomaly_score"].to_numpy(dtype=np.float64))
    figures: dict[str, Any] = {"apps": int(sum(len(p) for p in parts["newer"]))}
    scores, thresholds = {}, {}
    for key, side in sides.items():
        values = np.concatenate(parts[key]) if parts[key] else np.empty(0)
        threshold = model_threshold(models[key])
        scores[f"version {side.version}"], thresholds[f"version {side.version}"] = values, threshold
        quantiles = {f"p{q}": float(np.quantile(values, q / 100)) if len(values) else None for q in (50, 90, 99)}
        figures[key] = {"version": side.version, "threshold": threshold,
                        "flagged_share": float(np.mean(values > threshold)) if len(values) and threshold is not None
                        else None, **quantiles}
    return figures, scores, thresholds


def _definitions(older: Side, newer: Side, shift: dict[str, Any]) -> dict[str, Any]:
    """Whether the two sides' feature definitions differ, and what the shift was computed on: the
    features both sides' rows hold; those only one side has are listed, and a line says so."""
    only_older, only_newer = shift["only_in_older"], shift["only_in_newer"]
    differ = older.defs_sha256 != newer.defs_sha256
    part: dict[str, Any] = {"older": older.defs_sha256, "newer": newer.defs_sha256, "differ": differ,
                            "shared_features": shift["features"]}
    if differ or only_older or only_newer:
        why = "feature definitions differ (feast.defs_sha256)" if differ else "the feature columns differ"
        part["note"] = (f"{why}: the shift is on the {shift['features']} shared features; "
                        f"only in older: {listed(only_older) or 'none'}; only in newer: {listed(only_newer) or 'none'}")
    return part


def sides(rt: "Runtime", model: str | None, versions: tuple[str, str] | None, refs: tuple[str, str] | None
          ) -> tuple[Side, Side]:
    """The older and the newer side, from two versions of ``model`` or two lakeFS refs."""
    if (versions is None) == (refs is None):
        raise ConfigError("give --model NAME --versions A B, or --refs lakefs://repo/refA lakefs://repo/refB")
    if versions is not None:
        if not model:
            raise ConfigError("--versions needs --model NAME")

        # Both versions and their tags are checked before either's data is rebuilt (the slow part).
        older, newer = (model_lineage(rt, model, *((None, v[1:]) if v.startswith("@") else (v, None)))
                        for v in versions)
        return _version_side(rt, older), _version_side(rt, newer)
    if model:
        raise ConfigError("--model goes with --versions, not with --refs")
    return _ref_side(rt, refs[0]), _ref_side(rt, refs[1])


@dataclass(frozen=True)
class DiffSummary(Summary):
    """What changed between the data of two versions (or refs), older first: the apps, the
    families, the training split's shift (``data_diff.compare``), the quarantine, the lakeFS
    history, the feature definitions, the hyperparameters, the scores on the same test apps
    (two versions only) and where the report went."""

    older: dict[str, Any]
    newer: dict[str, Any]
    apps: dict[str, Any]
    families: dict[str, Any]
    train_shift: dict[str, Any]
    quarantine: dict[str, Any]
    lakefs: dict[str, Any]
    feature_definitions: dict[str, Any]
    hyperparameters: dict[str, list] | None
    verdict: str
    scores: dict[str, Any] | None = None
    report_artifact: str | None = None
    report: str | None = None
    UNSET_LEFT_OUT = ("scores", "report_artifact", "report")  # what this diff did not produce


def diff(rt: "Runtime", model: str | None = None, versions: tuple[str, str] | None = None,
         refs: tuple[str, str] | None = None, psi_bound: float = PSI_BOUND, top: int = 10,
         out: Path | None = None) -> DiffSummary:
    """The diff summary of the data behind two versions (or at two refs), older first. The
    report (``diff_report``) goes to ``out`` when given and, for two versions, onto the newer
    version's run (``REPORT_ARTIFACTS``/<older>-<newer>)."""
    check_psi_bound(psi_bound)
    check_top(top)
    older, newer = sides(rt, model, versions, refs)
    features = [*older.data.features, *(c for c in newer.data.features if c not in older.data.features)]
    summary: dict[str, Any] = {"older": older.info(), "newer": newer.info(),
                               **compare(older.data.rows, newer.data.rows, features, psi_bound, top)}
    summary["quarantine"] = {"older": _quarantine(rt, older), "newer": _quarantine(rt, newer)}
    summary["lakefs"] = _history(rt, older, newer)
    summary["feature_definitions"] = _definitions(older, newer, summary["train_shift"])
    summary["hyperparameters"] = (differing(older.params, newer.params, ignore=DATA_PARAMS)
                                  if older.params is not None and newer.params is not None else None)
    scores, thresholds = None, None
    if older.version is not None and newer.version is not None:
        summary["scores"], scores, thresholds = _scores_on_the_same_apps(rt, model, older, newer)
    summary["verdict"] = verdict(summary)
    # Written whole to a scratch folder first: a failure leaves no half report anywhere.
    with tempfile.TemporaryDirectory(prefix="dfp-diff-") as tmp:
        write_report(summary, Path(tmp), scores, thresholds)
        if newer.run_id is not None:
            path = f"{REPORT_ARTIFACTS}/{older.version}-{newer.version}"
            rt.mlflow.log_artifacts(newer.run_id, tmp, artifact_path=path)
            summary["report_artifact"] = f"runs:/{newer.run_id}/{path}/{REPORT}"
        if out is not None:
            shutil.copytree(tmp, out, dirs_exist_ok=True)
            summary["report"] = str(Path(out) / REPORT)
    return DiffSummary(**summary)
