"""What changed between two datasets' train/val/test splits (`dfp diff`'s comparisons), in Spark.

Each side is the rows of its pinned snapshot as a lazy Spark frame (``PinnedRows.rows``, a
``dataset_split`` column). Nothing here collects rows: Spark joins and counts, and the driver
gets small tables back (counts, up to ``SHOWN_IDS`` example ids, the features' value counts),
so memory stays bounded whatever the size of the splits. The wide rows are Avro, decoded whole
whatever columns a query reads, so each side's are read twice only: once into a narrow table of
its apps (kept by Spark, memory or disk, for the counts and the join), once for the train
split's value counts.

Apps are matched by ``sample_id`` (sha256 and data source). An app in the newer data only was
added, in the older only removed, in both kept; a kept app whose label or split differs changed
label or moved. Counts are given per split (the split it is in: the newer data's for added and
kept apps, the older's for removed ones) and per label. The training split's features are
compared as `dfp drift` compares a batch with a version's training: the older train split's
profile, the newer one counted into its bins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from dfp_core.errors import DatasetError
from dfp_core.ml.feature_drift import BatchCounts, FeatureValueCounts, feature_shift, profile_from_value_counts
from dfp_core.params import PSI_BOUND

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

SPLITS = ("train", "val", "test")
KEY = "sample_id"
FAMILY = "malware_family"
SPLIT = "dataset_split"
SHOWN_IDS = 5  # example sample ids per kind of change
LABEL_NAMES = {0: "benign", 1: "malware"}


def apps(rows: "DataFrame") -> "DataFrame":
    """One row per app: ``sample_id``, ``split``, ``label``, ``family`` ("" when none), kept by
    Spark (the caller unpersists it). A split without apps, or an app in two splits (or twice in
    one), is refused."""
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    missing = [c for c in (KEY, "label", SPLIT) if c not in rows.columns]
    if missing:
        raise DatasetError(f"the data lacks column(s): {', '.join(missing)}")
    family = F.coalesce(F.col(FAMILY).cast("string"), F.lit("")) if FAMILY in rows.columns else F.lit("")
    table = rows.select(F.col(KEY).cast("string").alias(KEY), F.col(SPLIT).alias("split"),
                        F.col("label").cast("int").alias("label"), family.alias("family"))
    table = table.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        _check_apps(table)
    except BaseException:
        table.unpersist()
        raise
    return table


def _check_apps(table: "DataFrame") -> None:
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark.sql import functions as F

    present = {r["split"] for r in table.select("split").distinct().collect()}
    for split in SPLITS:
        if split not in present:
            raise DatasetError(f"the data has no {split} split")
    repeated = table.groupBy(KEY).count().where(F.col("count") > 1).select(KEY).orderBy(KEY).limit(1).collect()
    if repeated:
        raise DatasetError(f"sample_id {repeated[0][KEY]} is in the splits more than once")


def _counted(groups: pd.DataFrame) -> dict[str, Any]:
    """Totals of (split, label, count) rows."""
    return {"total": int(groups["count"].sum()),
            "by_split": {s: int(groups.loc[groups["split"] == s, "count"].sum()) for s in SPLITS},
            "by_label": {name: int(groups.loc[groups["label"] == label, "count"].sum())
                         for label, name in LABEL_NAMES.items()}}


def _changes(joined: "DataFrame", column: str, name: str) -> dict[str, Any]:
    """Kept apps whose ``column`` differs: how many, by "before->after", a few sample ids."""
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark.sql import functions as F

    before, after = F.col(f"older_{column}"), F.col(f"newer_{column}")
    changed = joined.where(before.isNotNull() & after.isNotNull() & (before != after))
    moves = changed.groupBy(F.concat(before.cast("string"), F.lit("->"), after.cast("string")).alias("move")).count()
    by = {r["move"]: int(r["count"]) for r in moves.collect()}
    examples = [r[KEY] for r in changed.select(KEY).orderBy(KEY).limit(SHOWN_IDS).collect()]
    return {"total": sum(by.values()), f"by_{name}": dict(sorted(by.items())), "examples": examples}


def membership(older: "DataFrame", newer: "DataFrame") -> dict[str, Any]:
    """Apps added, removed and kept; kept apps whose label changed or that moved between splits
    (``apps`` tables)."""
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    def side(table: "DataFrame", name: str) -> "DataFrame":
        return table.select(KEY, *(F.col(c).alias(f"{name}_{c}") for c in ("split", "label")))

    # Narrow (an id and four small columns an app): kept while the three questions are asked of it.
    joined = side(older, "older").join(side(newer, "newer"), KEY, "full_outer").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        status = (F.when(F.col("older_split").isNull(), "added").when(F.col("newer_split").isNull(), "removed")
                  .otherwise("kept"))
        groups = joined.groupBy(status.alias("status"), F.coalesce("newer_split", "older_split").alias("split"),
                                F.coalesce("newer_label", "older_label").alias("label")).count().toPandas()
        result = {kind: _counted(groups[groups["status"] == kind]) for kind in ("added", "removed", "kept")}
        result["label_changed"] = _changes(joined, "label", "change")
        result["moved"] = _changes(joined, "split", "move")
    finally:
        joined.unpersist()
    return result


def split_label_counts(table: "DataFrame") -> dict[str, dict[str, int]]:
    """Apps per split and label of an ``apps`` table."""
    counts = {(r["split"], r["label"]): int(r["count"]) for r in table.groupBy("split", "label").count().collect()}
    return {s: {name: counts.get((s, label), 0) for label, name in LABEL_NAMES.items()} for s in SPLITS}


def _family_counts(table: "DataFrame") -> pd.Series:
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark.sql import functions as F

    rows = table.where((F.col("label") == 1) & (F.col("family") != "")).groupBy("family").count().collect()
    return pd.Series({r["family"]: int(r["count"]) for r in rows}, dtype=np.int64)


def families(older: "DataFrame", newer: "DataFrame") -> dict[str, Any]:
    """Malware families present in one side only, and every family's malware apps on each side
    as [older, newer], the most frequent first (ties by name)."""
    a, b = _family_counts(older), _family_counts(newer)
    both = pd.concat([a.rename("older"), b.rename("newer")], axis=1).fillna(0).astype(int).sort_index()
    both = both.assign(total=both.sum(axis=1)).sort_values(["total"], ascending=False, kind="stable")
    return {"appeared": sorted(set(b.index) - set(a.index)), "disappeared": sorted(set(a.index) - set(b.index)),
            "counts": {str(f): [int(r.older), int(r.newer)] for f, r in both.iterrows()}}


def value_counts(rows: "DataFrame", features: Sequence[str]) -> FeatureValueCounts:
    """Every feature's distinct values and their apps, in one pass of Spark over ``rows``: the
    driver gets one row per (feature, distinct value), never the rows themselves."""
    # One (feature index, value) pair per app and feature; NaN counts as missing, as in pandas.
    pairs = ", ".join(f"{i}, nanvl(double(`{f}`), double(null))" for i, f in enumerate(features))
    table = (rows.selectExpr(f"stack({len(features)}, {pairs}) as (feature, value)")
             .groupBy("feature", "value").count().toPandas())
    total = int(table.loc[table["feature"] == 0, "count"].sum())  # every app has a value (or null) per feature
    return FeatureValueCounts.from_table(table, total, list(features))


def train_shift(older_train: "DataFrame", newer_train: "DataFrame", features: Sequence[str],
                psi_bound: float = PSI_BOUND, top: int = 10) -> dict[str, Any]:
    """Every shared feature's PSI and binned KS, newer train split against the older one's
    profile, the largest first; the features only one side has are listed."""
    shared = [f for f in features if f in older_train.columns and f in newer_train.columns]
    if not shared:
        raise DatasetError("the two train splits share no feature column")
    profile = profile_from_value_counts(value_counts(older_train, shared))
    counts = BatchCounts(profile)
    counts.add_value_counts(value_counts(newer_train, shared))
    shifts = feature_shift(profile, counts)
    shifted = [s for s in shifts if s["psi"] > psi_bound]
    return {"features": len(shifts), "features_shifted": len(shifted), "psi_bound": psi_bound,
            "top_features": shifts[:top],
            "only_in_older": sorted(c for c in features if c in older_train.columns and c not in newer_train.columns),
            "only_in_newer": sorted(c for c in features if c in newer_train.columns and c not in older_train.columns)}


def differing(older: Mapping[str, str], newer: Mapping[str, str], ignore: Sequence[str] = ()) -> dict[str, list]:
    """Keys whose values differ (absent: None), as [older, newer]."""
    keys = sorted((set(older) | set(newer)) - set(ignore))
    return {k: [older.get(k), newer.get(k)] for k in keys if older.get(k) != newer.get(k)}


def verdict(summary: Mapping[str, Any]) -> str:
    """One line a person reads first."""
    m = summary["apps"]
    shift = summary["train_shift"]
    return (f"{m['added']['total']} apps added, {m['removed']['total']} removed, {m['kept']['total']} kept "
            f"({m['label_changed']['total']} changed label, {m['moved']['total']} moved split); "
            f"families +{len(summary['families']['appeared'])}/-{len(summary['families']['disappeared'])}; "
            f"{shift['features_shifted']} of {shift['features']} training features shifted beyond PSI {shift['psi_bound']:g}"
            + (f"; {note}" if (note := (summary.get("feature_definitions") or {}).get("note")) else ""))


def compare(older_rows: "DataFrame", newer_rows: "DataFrame", features: Sequence[str], psi_bound: float = PSI_BOUND,
            top: int = 10) -> dict[str, Any]:
    """The data part of the diff, of two sides' rows (``dataset_split`` says each row's split):
    apps, families, the training split's shift."""
    # Deferred (PySpark): a diff runs in Spark; its summary type does not need it.
    from pyspark.sql import functions as F

    older = apps(older_rows)
    try:
        newer = apps(newer_rows)
    except BaseException:
        older.unpersist()
        raise
    try:
        summary = {"apps": membership(older, newer), "families": families(older, newer)}
        by_split = {"older": split_label_counts(older), "newer": split_label_counts(newer)}
    finally:
        older.unpersist()
        newer.unpersist()
    summary["train_shift"] = train_shift(older_rows.where(F.col(SPLIT) == "train"),
                                         newer_rows.where(F.col(SPLIT) == "train"), features, psi_bound, top)
    summary["apps"]["rows"] = {side: sum(sum(c.values()) for c in counts.values()) for side, counts in by_split.items()}
    summary["apps"]["by_split_and_label"] = by_split
    return summary
