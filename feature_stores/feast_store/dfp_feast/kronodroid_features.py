"""Feast objects for ``kronodroid.fct_training_dataset`` read at a lakeFS ref.

The source table lives in the Iceberg catalog of one lakeFS ref (a branch or,
for reproducible training, a commit id) and can be pinned to an Iceberg
snapshot. Code calls :func:`build_definitions` with explicit values;
``dfp feast apply --repo R --ref REF`` registers them for a ref. The module-level
objects Feast's own CLI collects describe the default ``kronodroid@main``
(importing this module reads no environment and starts nothing).

This file is hashed into the ``feast.defs_sha256`` lineage tag: any edit here
(or in dfp_core/schema.py) marks previously trained models' data as different.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.table_format import IcebergFormat
from feast.types import Int64, String

from dfp_core.kronodroid import schema
from dfp_core.settings import LakeFSSettings
from dfp_core.spark import catalog_name

AUTOENCODER_VIEW = "kronodroid_autoencoder_features"
LABELS_VIEW = "kronodroid_sample_labels"
ENTITY = "sample"


@dataclass(frozen=True)
class Definitions:
    sample: Entity
    source: SparkSource
    autoencoder_features: FeatureView
    sample_labels: FeatureView
    table: str  # the catalog-qualified Iceberg table Feast reads

    def objects(self) -> list:
        return [self.sample, self.source, self.autoencoder_features, self.sample_labels]


def source_table(repository: str, ref: str) -> str:
    return f"{catalog_name(repository, ref)}.{schema.FCT_TABLE_FQN}"


def build_definitions(repository: str, ref: str, snapshot_id: str | int | None = None) -> Definitions:
    sample = Entity(
        name=ENTITY, join_keys=["sample_id"], value_type=ValueType.STRING,
        description="One app in one KronoDroid data source (emulator or real device).",
    )
    table = source_table(repository, ref)
    properties = {"snapshot-id": str(snapshot_id)} if snapshot_id not in (None, "") else {}
    source = SparkSource(
        name="kronodroid_fct_training_dataset",
        path=table,
        table_format=IcebergFormat(properties=properties),
        timestamp_field="event_timestamp",
        description=f"kronodroid.fct_training_dataset at lakefs://{repository}/{ref}",
        tags={"lakefs_repository": repository, "lakefs_ref": ref, "iceberg_snapshot_id": str(snapshot_id or "")},
    )
    # ttl=0: samples do not expire; the event time is the app's date.
    autoencoder_features = FeatureView(
        name=AUTOENCODER_VIEW,
        entities=[sample],
        ttl=timedelta(0),
        schema=[Field(name=name, dtype=Int64) for name in schema.FEATURE_COLUMNS],
        source=source,
        online=False,
        description="Every numeric KronoDroid model feature: syscall counts, permissions, static aggregates, APK metadata.",
    )
    sample_labels = FeatureView(
        name=LABELS_VIEW,
        entities=[sample],
        ttl=timedelta(0),
        schema=[
            Field(name="label", dtype=Int64),
            Field(name="malware_family", dtype=String),
            Field(name="data_source", dtype=String),
            Field(name="dataset_split", dtype=String),
            Field(name="sample_year", dtype=Int64),
        ],
        source=source,
        online=False,
        description="Labels and split of each sample, for evaluation only (never model input).",
    )
    return Definitions(sample, source, autoencoder_features, sample_labels, table)


# Module-level objects for Feast's CLI (it collects them from this module).
_DEFS = build_definitions(LakeFSSettings.repository, LakeFSSettings.branch)
sample = _DEFS.sample
kronodroid_fct_training_dataset = _DEFS.source
kronodroid_autoencoder_features = _DEFS.autoencoder_features
kronodroid_sample_labels = _DEFS.sample_labels
