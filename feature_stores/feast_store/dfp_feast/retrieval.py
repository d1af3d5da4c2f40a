"""Train/val/test frames for one lakeFS ref, served by Feast historical retrieval
from the Iceberg table pinned to a commit id and snapshot, plus the dataset ids
and content hashes that identify them."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.compute as pc
from feast import FeatureStore
from feast.repo_config import RegistryConfig, load_repo_config

from dfp_core import iceberg
from dfp_core.kronodroid import entity_index, schema
from dfp_core.errors import DatasetError, listed
from dfp_core.iceberg import TableRef
from dfp_core.lakefs_ops import LakeFS
from dfp_core.lineage import DatasetSpec, PinnedRows, RetrievedDataset, content_sha256, dataset_id, defs_sha256
from dfp_core.splits import SPLITS
from dfp_feast import FEAST_CONFIG_FILE, FEAST_REPO_DIR
from dfp_feast.kronodroid_features import AUTOENCODER_VIEW, LABELS_VIEW, build_definitions
from dfp_core.spark import register_ref_catalog

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from pyspark.sql import SparkSession

EVAL_FIELDS = ("label", "malware_family", "data_source", "dataset_split", "sample_year")
# What training retrieves: every model feature and the evaluation fields.
FEATURE_REFS = tuple(f"{AUTOENCODER_VIEW}:{c}" for c in schema.FEATURE_COLUMNS) + tuple(
    f"{LABELS_VIEW}:{c}" for c in EVAL_FIELDS
)
# Feast labels its Spark offline store "alpha" on every call; we pin the version instead.
_FEAST_ALPHA_WARNING = "The spark (data source API|offline store) is an experimental"


def feature_store(registry_dir: Path, offline_store_type: str | None = None,
                  offline_options: dict | None = None) -> "FeatureStore":
    """The repo's Feast config with a registry of its own (apply is per retrieval);
    ``offline_store_type`` swaps the offline store (e.g. Feast's own ``spark``, to compare),
    ``offline_options`` sets options of it."""
    config = load_repo_config(FEAST_REPO_DIR, FEAST_CONFIG_FILE)
    if offline_store_type or offline_options:  # read lazily by Feast: replacing the raw section is enough
        config.offline_config = {
            **config.offline_config, **(offline_options or {}),
            **({"type": offline_store_type} if offline_store_type else {}),
        }
    config.registry_config = RegistryConfig(registry_type="file", path=str(registry_dir / "registry.db"))
    config.online_store.path = str(registry_dir / "online_store.db")
    return FeatureStore(config=config)


def _check_table(spark: "SparkSession", table: TableRef, all_features: bool = True) -> dict[str, str]:
    if not iceberg.table_exists(spark, table):
        raise DatasetError(
            f"table {schema.FCT_TABLE_FQN} does not exist at lakefs://{table.repo}/{table.ref}; "
            "run `dfp transform` to create it"
        )
    columns = set(spark.table(iceberg.qualified(spark, table)).columns)
    needed = ("sample_id", "event_timestamp", *EVAL_FIELDS, *(schema.FEATURE_COLUMNS if all_features else ()))
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DatasetError(f"{schema.FCT_TABLE_FQN} at {table.ref[:12]} lacks columns the feature views need: "
                           f"{listed(missing)}")
    return iceberg.table_properties(spark, table)


def _check_snapshot(spark: "SparkSession", table: TableRef, snapshot_id: str) -> None:
    if not iceberg.has_snapshot(spark, table, int(snapshot_id)):
        raise DatasetError(f"Iceberg snapshot {snapshot_id} of {schema.FCT_TABLE_FQN} is not in the table at {table.ref[:12]}")


def _pin(spark: "SparkSession", lakefs: LakeFS, repo: str, ref: str, snapshot_id: str | int | None,
         max_rows_per_split: int, feature_view: str | None, all_features: bool = True,
         ) -> tuple[TableRef, DatasetSpec, dict[str, str]]:
    """The table at ``ref``'s commit and the spec of the splits pinned to ``snapshot_id`` (the
    current one when None), each checked: the view, the table and its columns (every feature of
    these definitions unless ``all_features`` is False), the snapshot."""
    if feature_view not in (None, AUTOENCODER_VIEW):
        raise DatasetError(f"the data was served by feature view {feature_view!r}, which these definitions do not "
                           f"define (they have {AUTOENCODER_VIEW!r})")
    if max_rows_per_split < 0:
        raise DatasetError("max_rows_per_split must be >= 0 (0 = unlimited)")
    commit = lakefs.resolve_commit(repo, ref)  # unknown ref -> RefNotFoundError
    table = TableRef(repo, commit, schema.MART_NAMESPACE, schema.FCT_TABLE)
    properties = _check_table(spark, table, all_features)
    if snapshot_id in (None, ""):
        snapshot_id = iceberg.current_snapshot_id(spark, table)
    else:
        _check_snapshot(spark, table, str(snapshot_id))
    spec = DatasetSpec(
        lakefs_repository=repo, lakefs_commit=commit, source_table=schema.FCT_TABLE_FQN,
        iceberg_snapshot_id=str(snapshot_id), feature_view=AUTOENCODER_VIEW, feast_defs_sha256=defs_sha256(),
        split_spec=json.loads(properties.get("dfp.split_spec", "{}")), max_rows_per_split=int(max_rows_per_split),
    )
    return table, spec, properties


def load_splits(
    spark: "SparkSession",
    lakefs: LakeFS,
    repo: str,
    ref: str,
    snapshot_id: str | int | None = None,
    max_rows_per_split: int = 0,
    splits: tuple[str, ...] = SPLITS,
    feature_view: str | None = None,
) -> RetrievedDataset:
    """Resolve ``ref`` to a commit, pin the table snapshot, retrieve the splits in one Feast
    retrieval. ``feature_view``: the view the caller expects (a version's tag), refused when
    these definitions do not define it. ``Runtime.retrieve_splits`` calls this (the entry point
    ``dfp.splits_reader``)."""
    table, spec, properties = _pin(spark, lakefs, repo, ref, snapshot_id, max_rows_per_split, feature_view)
    defs = build_definitions(repo, spec.lakefs_commit, spec.iceberg_snapshot_id)
    keys_table = _entity_index(spark, table, spec.iceberg_snapshot_id)
    if keys_table is None:  # no index of this snapshot: the keys from the wide rows themselves
        keys_table = spark.read.format("iceberg").option("snapshot-id", spec.iceberg_snapshot_id).load(defs.table)
    # A table written before its read splits were set has Iceberg's 128 MB splits: one task of the
    # broadcast join would send the driver ~2 GB at 10x, so it gets the point-in-time join only.
    options = None if iceberg.READ_SPLIT_SIZE_PROPERTY in properties else {"broadcast_entity_rows": 0}
    return _retrieve(keys_table, spec, defs, splits, spec.split_spec, options)


def split_rows(
    spark: "SparkSession",
    lakefs: LakeFS,
    repo: str,
    ref: str,
    snapshot_id: str | int | None = None,
    max_rows_per_split: int = 0,
    feature_view: str | None = None,
) -> PinnedRows:
    """The rows ``load_splits`` serves for the same arguments, as one lazy Spark frame read from
    the pinned snapshot (``dataset_split`` says each row's split), for work that must not hold
    the splits in memory (`dfp diff`, `dfp drift`); the spec, dataset ids and row counts as
    ``load_splits`` gives them. The entry point ``dfp.split_rows``.

    The features are those the pinned snapshot holds (``PinnedRows.features``): a table written
    under other feature definitions is read as it is, so that `dfp diff` can compare the features
    two sides share and list the others."""
    # Deferred (PySpark): only the subset's ranking needs its functions.
    from pyspark.sql import Window, functions as F

    table, spec, _ = _pin(spark, lakefs, repo, ref, snapshot_id, max_rows_per_split, feature_view, all_features=False)
    defs = build_definitions(repo, spec.lakefs_commit, spec.iceberg_snapshot_id)
    # Iceberg reads a snapshot with the schema it was written with: its own columns.
    wide = spark.read.format("iceberg").option("snapshot-id", spec.iceberg_snapshot_id).load(defs.table)
    features = tuple(c for c in wide.columns if c not in schema.FCT_KEY_COLUMNS)
    rows = wide.select("sample_id", *EVAL_FIELDS, *features)
    if spec.max_rows_per_split:  # the subset _retrieve takes: the first rows of each split by subset order
        order = _subset_order(spec.split_spec.get("seed", 0))
        rank = F.row_number().over(Window.partitionBy("dataset_split").orderBy(order))
        rows = rows.withColumn("_rank", rank).where(F.col("_rank") <= spec.max_rows_per_split).drop("_rank")
    # Counted from the narrow entity index where it lists this snapshot (the wide rows are Avro,
    # decoded whole); a subset holds the first max_rows_per_split of each split.
    keys = _entity_index(spark, table, spec.iceberg_snapshot_id)
    totals = (wide if keys is None else keys).groupBy("dataset_split").count().collect()
    counts = {r["dataset_split"]: min(int(r["count"]), spec.max_rows_per_split or int(r["count"])) for r in totals}
    for split in SPLITS:
        if not counts.get(split):
            raise DatasetError(
                f"the {split} split is empty in {schema.FCT_TABLE_FQN} at "
                f"lakefs://{spec.lakefs_repository}/{spec.lakefs_commit[:12]} (snapshot {spec.iceberg_snapshot_id})")
    return PinnedRows(spec=spec, rows=rows, counts={s: counts[s] for s in SPLITS},
                      dataset_ids={s: dataset_id(spec, s) for s in SPLITS}, features=features)


def _entity_index(spark: "SparkSession", table: TableRef, snapshot_id: str | int):
    """The narrow entity index written with ``table`` in the same commit, where it lists the
    rows of snapshot ``snapshot_id``; None otherwise (a table written before the index
    existed, or another snapshot pinned)."""
    index = TableRef(table.repo, table.ref, schema.MART_NAMESPACE, entity_index.TABLE)
    if not iceberg.table_exists(spark, index):
        return None
    if iceberg.table_properties(spark, index).get(entity_index.INDEXED_SNAPSHOT_PROPERTY) != str(snapshot_id):
        return None
    return spark.table(iceberg.qualified(spark, index))


def _entity_keys(keys_table, splits, subset_seed: int | None = None) -> "pd.DataFrame":
    """(sample_id, event_timestamp, dataset_split) of the requested splits, from the entity
    index or the snapshot itself, plus ``subset_order`` where a subset is taken
    (``subset_seed`` given). A small local frame: the offline store builds its
    point-in-time join on it and streams the ~480-column feature rows through."""
    # Deferred (PySpark): only the entity keys need it.
    from pyspark.sql import functions as F

    columns = [F.col("sample_id"), F.col("event_timestamp"), F.col("dataset_split")]
    if subset_seed is not None:
        columns.append(_subset_order(subset_seed).alias("subset_order"))
    return keys_table.where(F.col("dataset_split").isin(list(splits))).select(*columns).toPandas()


def _subset_order(seed: int):
    """The order in which the max_rows_per_split subset takes a split's rows (the split spec's
    ``seed``): the same rows for the same spec, spread over sources."""
    # Deferred (PySpark): only a subset needs it.
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(f"{int(seed)}:"), F.col("sample_id")), 256)


def _retrieve(keys_table, spec: DatasetSpec, defs, splits, split_spec: dict,
              offline_options: dict | None = None) -> RetrievedDataset:
    keys = _entity_keys(keys_table, splits, split_spec.get("seed", 0) if spec.max_rows_per_split else None)
    chosen = {}
    for split in splits:
        entities = keys[keys["dataset_split"] == split]
        if spec.max_rows_per_split:
            entities = entities.sort_values("subset_order", kind="mergesort").head(spec.max_rows_per_split)
        if entities.empty:  # an empty split is an error, not an empty frame to train on
            raise DatasetError(
                f"the {split} split is empty in {schema.FCT_TABLE_FQN} at "
                f"lakefs://{spec.lakefs_repository}/{spec.lakefs_commit[:12]} "
                f"(snapshot {spec.iceberg_snapshot_id}); check the split ratios or the input data"
            )
        chosen[split] = entities
    # One retrieval for all requested splits: Feast's store then reads the snapshot once.
    entity_df = pd.concat(chosen.values())[["sample_id", "event_timestamp"]].reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="dfp-feast-") as registry_dir:
        store = feature_store(Path(registry_dir), offline_options=offline_options)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FEAST_ALPHA_WARNING, category=RuntimeWarning)
            store.apply(defs.objects())
            # Arrow, not pandas, until each split is cut and sorted: one pandas copy per row, not three.
            retrieved = store.get_historical_features(entity_df=entity_df, features=list(FEATURE_REFS)).to_arrow()
    result = RetrievedDataset(spec=spec, frames={})
    for split in splits:
        frame = _split_frame(retrieved, split)
        if len(frame) != len(chosen[split]):
            raise DatasetError(
                f"Feast returned {len(frame)} {split} rows for {len(chosen[split])} entity keys from "
                f"{schema.FCT_TABLE_FQN} snapshot {spec.iceberg_snapshot_id}"
            )
        result.frames[split] = frame
        result.dataset_ids[split] = dataset_id(spec, split)
        result.content_sha256[split] = content_sha256(frame, columns=["sample_id", "label", *schema.FEATURE_COLUMNS])
    return result


def _split_frame(retrieved: "pa.Table", split: str) -> "pd.DataFrame":
    """One split's rows sorted by sample_id, as pandas, with one copy of the rows: taken
    in order from the retrieved table (not filtered, then sorted), converted column by
    column while the taken copy is released."""
    # The labels view's dataset_split comes from the same snapshot as the entity keys.
    rows = pc.indices_nonzero(pc.equal(retrieved["dataset_split"], split))
    order = pc.sort_indices(retrieved["sample_id"].take(rows))
    part = retrieved.take(rows.take(order))
    return part.to_pandas(split_blocks=True, self_destruct=True)


def apply_definitions(spark: "SparkSession", repo: str, ref: str, snapshot_id: str | int | None = None,
                      config_file: Path = FEAST_CONFIG_FILE) -> dict:
    """What ``feast apply`` does for this repository's views, at ``repo``@``ref``: check
    the source through ``spark`` (wired to lakeFS) and register the objects in the
    registry that ``config_file`` names. Returns what was registered."""
    register_ref_catalog(spark, repo, ref)
    defs = build_definitions(repo, ref, snapshot_id)
    store = FeatureStore(config=load_repo_config(FEAST_REPO_DIR, Path(config_file)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FEAST_ALPHA_WARNING, category=RuntimeWarning)
        store._get_provider().validate_data_source(store.config, defs.source)
        store.apply(defs.objects())
    return {"project": store.project, "registry": str(store.config.registry.path), "source_table": defs.table,
            "feature_views": [defs.autoencoder_features.name, defs.sample_labels.name]}
