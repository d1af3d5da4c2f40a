"""``dfp reproduce``: rebuild a registered model's exact train/val/test data from
its registry tags and prove it is the same (ids, row counts, content hashes);
optionally train again with the run's hyperparameters and compare metrics."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dfp_core import lineage
from dfp_core.errors import DatasetError, DfpError, RefNotFoundError, TrackingError
from dfp_core.params import TrainConfig
from dfp_core.progress import note, stage
from dfp_core.summary import Summary
from dfp_core.tracking.registry import verified_copy

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

SPLITS = ("train", "val", "test")


@dataclass
class ModelLineage:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]  # version tags (the nine)
    run_tags: dict[str, str]  # run tags (the nine + content hashes, row counts, split spec)
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class ReproduceReport(Summary):
    """Whether the version's data (and, with a retrain, its metrics) came out the same."""

    model: str
    version: str
    matches: bool
    differences: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    dataset_ids: dict[str, str] = field(default_factory=dict)
    seconds_rebuild: float | None = None
    metric_differences: dict[str, float] | None = None
    UNSET_LEFT_OUT = ("seconds_rebuild", "metric_differences")  # what was not measured


def model_lineage(rt: "Runtime", name: str, version: str | None = None, alias: str | None = None) -> ModelLineage:
    # Deferred (MLflow): when a reproduction runs.
    from mlflow.exceptions import MlflowException

    from dfp_core.tracking.server import check_tracking_server

    check_tracking_server(rt.settings.mlflow.tracking_uri)
    client = rt.mlflow
    if (version is None) == (alias is None):
        raise DfpError("give exactly one of --version or --alias")
    try:
        mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
        run = client.get_run(mv.run_id)
    except MlflowException as exc:
        raise TrackingError(f"model {name!r} {('version ' + version) if version else ('alias ' + alias)}: {exc.message}") from None
    missing = [t for t in lineage.LINEAGE_TAGS if t not in mv.tags]
    if missing:
        raise TrackingError(f"model {name} version {mv.version} lacks lineage tags: {', '.join(missing)}")
    return ModelLineage(name, str(mv.version), mv.run_id, dict(mv.tags), dict(run.data.tags),
                        dict(run.data.params), dict(run.data.metrics))


def rebuild(rt: "Runtime", model: ModelLineage):
    """The splits as Feast serves them now for the tagged commit, snapshot and view (a view
    these definitions do not define is refused)."""
    tags = model.tags
    max_rows = int(model.run_tags.get(lineage.TAG_MAX_ROWS, model.params.get("max_rows_per_split", "0")))
    return rt.retrieve_splits(tags[lineage.TAG_REPOSITORY], tags[lineage.TAG_REF], tags[lineage.TAG_SNAPSHOT], max_rows,
                              feature_view=tags[lineage.TAG_FEATURE_VIEW])


def pinned_rows(rt: "Runtime", model: ModelLineage):
    """The rows ``rebuild`` serves, left in Spark (``Runtime.split_rows``): for work that must not
    hold the splits in memory."""
    tags = model.tags
    max_rows = int(model.run_tags.get(lineage.TAG_MAX_ROWS, model.params.get("max_rows_per_split", "0")))
    return rt.split_rows(tags[lineage.TAG_REPOSITORY], tags[lineage.TAG_REF], tags[lineage.TAG_SNAPSHOT], max_rows,
                         feature_view=tags[lineage.TAG_FEATURE_VIEW])


def compare(model: ModelLineage, data) -> list[str]:
    """Every way the rebuilt data differs from what the tags recorded."""
    differences = _spec_differences(model, data.spec)
    for split in SPLITS:
        differences += _split_differences(model, split, data.dataset_ids[split], data.rows[split])
        content = model.run_tags.get(lineage.CONTENT_TAGS[split])
        if content is None:
            differences.append(f"{split}: no content hash was recorded, cannot verify the rows")
        elif content != data.content_sha256[split]:
            differences.append(f"{split} content differs: recorded {content[:16]}..., rebuilt {data.content_sha256[split][:16]}...")
    return differences


def compare_pinned(model: ModelLineage, pinned, definitions: bool = True) -> list[str]:
    """``compare`` for rows left in Spark (``pinned_rows``): the commit, table, definitions,
    dataset ids and row counts; the content hashes need the rows in memory and are not checked.
    ``definitions=False``: feature definitions changed since the version are not a difference
    (`dfp diff` compares the features both sides have); the dataset ids are then checked as
    the version's own definitions give them, since each id hashes the definitions too."""
    spec, ids = pinned.spec, pinned.dataset_ids
    if not definitions:
        spec = dataclasses.replace(spec, feast_defs_sha256=model.tags[lineage.TAG_DEFS_SHA])
        ids = {split: lineage.dataset_id(spec, split) for split in SPLITS}
    differences = _spec_differences(model, spec)
    for split in SPLITS:
        differences += _split_differences(model, split, ids[split], pinned.counts[split])
    return differences


def _spec_differences(model: ModelLineage, spec) -> list[str]:
    differences = []
    tags = model.tags
    if spec.lakefs_commit != tags[lineage.TAG_REF]:
        differences.append(f"commit: tagged {tags[lineage.TAG_REF]}, resolved {spec.lakefs_commit}")
    if spec.source_table != tags[lineage.TAG_SOURCE_TABLE]:
        differences.append(f"source table: tagged {tags[lineage.TAG_SOURCE_TABLE]}, rebuilt from {spec.source_table}")
    if spec.feast_defs_sha256 != tags[lineage.TAG_DEFS_SHA]:
        differences.append(
            f"feature definitions changed: feast.defs_sha256 tagged {tags[lineage.TAG_DEFS_SHA][:16]}..., "
            f"now {spec.feast_defs_sha256[:16]}... ({', '.join(lineage.FEATURE_DEFINITION_FILES)})"
        )
    return differences


def _split_differences(model: ModelLineage, split: str, rebuilt_id: str, rebuilt_rows: int) -> list[str]:
    differences = []
    tag = lineage.SPLIT_ID_TAGS[split]
    if rebuilt_id != model.tags[tag]:
        differences.append(f"{tag}: tagged {model.tags[tag]}, rebuilt {rebuilt_id}")
    rows = model.run_tags.get(lineage.ROWS_TAGS[split])
    if rows is not None and int(rows) != rebuilt_rows:
        differences.append(f"{split} rows: recorded {rows}, rebuilt {rebuilt_rows}")
    return differences


def config_from_run(model: ModelLineage) -> TrainConfig:
    """The TrainConfig a run was trained with, from its logged params, on the CPU.
    Runs from before the score choice logged no ``score``: they scored with the MSE."""
    before_score = {} if "score" in model.params else {"score": "mse"}
    return TrainConfig.from_params(
        model.params, repo=model.tags[lineage.TAG_REPOSITORY], ref=model.tags[lineage.TAG_REF],
        snapshot_id=model.tags[lineage.TAG_SNAPSHOT], accelerator="cpu", devices="1", strategy="auto", num_nodes=1,
        register=False, **before_score,
    )


def retrain_and_compare(model: ModelLineage, data) -> dict[str, float]:
    """Train again with the run's logged hyperparameters on the rebuilt data."""
    # Deferred (112 ms of imports): when a reproduction runs.
    from dfp_core.ml.fit import fit_and_evaluate

    config = config_from_run(model)
    with tempfile.TemporaryDirectory(prefix="dfp-retrain-") as tmp:
        result = fit_and_evaluate(config, data, Path(tmp))
    return {k: result.metrics[k] - model.metrics[k] for k in sorted(result.metrics) if k in model.metrics}


def reproduce(rt: "Runtime", name: str, version: str | None = None, alias: str | None = None,
              retrain: bool = False) -> ReproduceReport:
    with stage(1, 3, f"lineage of {name} {('version ' + version) if version else ('@' + alias)}"):
        model = model_lineage(rt, name, version, alias)
        note(f"lakefs://{model.tags[lineage.TAG_REPOSITORY]}/{model.tags[lineage.TAG_REF][:12]} "
             f"snapshot {model.tags[lineage.TAG_SNAPSHOT]}")
    report = ReproduceReport(model=name, version=model.version, matches=False)

    try:  # the version's files are the ones its training logged
        with verified_copy(rt, rt.mlflow.get_model_version(name, model.version)):
            pass
    except TrackingError as exc:
        report.differences.append(f"model files: {exc}")
        return report
    with stage(2, 3, "rebuild train/val/test through Feast"):
        started = time.monotonic()
        try:
            data = rebuild(rt, model)
        except RefNotFoundError as exc:
            report.differences.append(f"commit missing: {exc}")
            return report
        except DatasetError as exc:
            report.differences.append(f"snapshot or table missing: {exc}")
            return report
        report.seconds_rebuild = round(time.monotonic() - started, 2)
    with stage(3, 3, "compare ids, row counts and content"):
        report.differences = compare(model, data)
        report.rows, report.dataset_ids = data.rows, data.dataset_ids
        report.matches = not report.differences
        if retrain:
            report.metric_differences = retrain_and_compare(model, data)
    return report
