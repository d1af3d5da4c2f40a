"""Feast's Spark offline store with a point-in-time join that scans each source once.

Feast 0.67's Spark template joins every feature view on its own and reads each
view's rows twice (once to find the latest event per entity row, once to join
back), then left-joins each result to the entity frame; with ~480-column Avro
rows the scans and wide shuffles dominate a retrieval. This store returns the
same rows (same point-in-time, TTL and created-timestamp semantics; tests compare
it with Feast's own store) with a leaner plan:

* feature views that read the same source with the same entities, timestamps,
  TTL and filters share one scan of it;
* each entity row (numbered) is left-joined to the source rows it may use, in a
  shuffled hash join built on the small entity side: the wide rows are shuffled
  once and never sorted for the join;
* the latest rows per entity row are kept with MAX windows on that same
  partitioning (no second shuffle), and a final join on the entity row id
  broadcasts the entity rows, so no join back to the source and no left join of
  wide rows;
* where all views share one scan and the entity frame has at most
  ``broadcast_entity_rows`` rows (a store option, default 2,000,000), a broadcast
  inner join runs first: no shuffle at all, the wide rows stream past the entity
  rows' hash table as in a plain scan. Its result stands where it holds every
  entity row exactly once (then that one candidate is the latest); otherwise (an
  entity key with history, or without a match) the query below runs, and the
  source is read twice. Its result partitions are the source's read splits (an
  Iceberg table's ``read.split.target-size``), so that setting bounds what one
  task sends the driver;
* one SQL statement (one analysis of the wide plan, no temporary views left);
* the job collects Spark's Arrow batches (Feast's goes Spark -> pandas -> Arrow
  -> pandas), so timestamps come back timezone-aware (UTC);
* the result has at least one partition per ``rows_per_partition`` entity rows (a
  store option, default 5,000): each partition reaches the driver as one task
  result holding all its batches, so the driver's heap bounds the partition, not the
  whole result (adaptive execution would coalesce partitions by their compressed
  shuffle bytes, which say little about the Arrow size of ~480 columns).

One difference: where a source has several rows at an entity row's latest
timestamp (a tie), Feast's store returns every combination of them across the
views that read it; views sharing a scan here get each tied row once.

Everything else (entity frame checks, timestamp range, batch feature view
transformations, the retrieval job) is Feast's. Retrievals whose entity frame is
not a pandas frame (a SQL string, a Spark frame, none), or from sources other
than ``SparkSource``, go to Feast's store unchanged. Select it with ``offline_store: type:
dfp_feast.offline_store.SingleScanSparkOfflineStore``; ``spark_conf`` and the
other Spark store options work as before.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import KeysView, Optional, Union, cast

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute as pc
import pyspark.sql
from jinja2 import BaseLoader, Environment
from pydantic import NonNegativeInt, PositiveInt, StrictStr

from feast.batch_feature_view import BatchFeatureView
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.contrib.spark_offline_store import spark as feast_spark
from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
    SparkOfflineStore,
    SparkOfflineStoreConfig,
    SparkRetrievalJob,
)
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

logger = logging.getLogger(__name__)

# What must be equal for two feature views to share one scan, besides their source
# (``source_key``; the table query string differs per view even for one source).
_SCAN_FIELDS = (
    "ttl", "entities", "timestamp_field", "created_timestamp_column", "entity_selections",
    "min_event_timestamp", "max_event_timestamp", "date_partition_column", "min_date_partition", "max_date_partition",
)
# A column added to the uploaded entity frame: matches are found and ranked per entity row.
ENTITY_ROW_ID = "dfp_entity_row_id"
ROWS_PER_PARTITION = 5_000
BROADCAST_ENTITY_ROWS = 2_000_000


class SingleScanSparkOfflineStoreConfig(SparkOfflineStoreConfig):
    type: StrictStr = "dfp_feast.offline_store.SingleScanSparkOfflineStore"
    # Entity rows per partition of a retrieval's result (see the module docstring).
    rows_per_partition: PositiveInt = ROWS_PER_PARTITION
    # Largest entity frame tried first with the broadcast join (see the module docstring); 0: never.
    broadcast_entity_rows: NonNegativeInt = BROADCAST_ENTITY_ROWS


class SingleScanSparkOfflineStore(SparkOfflineStore):
    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: Optional[Union[pd.DataFrame, str, pyspark.sql.DataFrame]],
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ) -> RetrievalJob:
        ours = (
            isinstance(entity_df, pd.DataFrame) and ENTITY_ROW_ID not in entity_df.columns
            and all(isinstance(fv.batch_source, SparkSource) for fv in feature_views)
        )
        if not ours:
            return SparkOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names, filter_by_created_timestamp=filter_by_created_timestamp, **kwargs,
            )
        assert isinstance(config.offline_store, SparkOfflineStoreConfig)
        spark = feast_spark.get_spark_session_or_start_new_with_repoconfig(store_config=config.offline_store)

        # The entity frame: as Feast's Spark store does it.
        entity_schema = feast_spark._get_entity_schema(spark_session=spark, entity_df=entity_df)
        event_timestamp_col = offline_utils.infer_event_timestamp_from_entity_df(entity_schema=entity_schema)
        timestamp_range = feast_spark._get_entity_df_event_timestamp_range(entity_df, event_timestamp_col, spark)
        entity_table = offline_utils.get_temp_entity_table_name()
        # A copy with the row ids (unlike Feast's store, the caller's frame is left as it was).
        numbered = entity_df.assign(**{ENTITY_ROW_ID: np.arange(len(entity_df), dtype="int64")})
        feast_spark._upload_entity_df(
            spark_session=spark, table_name=entity_table, entity_df=numbered, event_timestamp_col=event_timestamp_col,
        )
        offline_utils.assert_expected_columns_in_entity_df(
            entity_schema=entity_schema,
            join_keys=offline_utils.get_expected_join_keys(project=project, feature_views=feature_views, registry=registry),
            entity_df_event_timestamp_col=event_timestamp_col,
        )

        contexts = offline_utils.get_feature_view_query_context(
            feature_refs, feature_views, registry, project, timestamp_range,
        )
        contexts = feast_spark._apply_bfv_transformations(
            spark_session=spark, feature_views=feature_views, query_contexts=contexts,
        )
        views = {fv.projection.name_to_use(): fv for fv in feature_views}
        spark_contexts = [_spark_context(context, views[context.name]) for context in contexts]
        entity_columns = cast(KeysView[str], entity_schema.keys())
        query, broadcast_query = build_queries(
            spark_contexts, entity_table, event_timestamp_col, list(entity_columns),
            full_feature_names=full_feature_names, filter_by_created_timestamp=filter_by_created_timestamp,
            broadcast=len(entity_df) <= getattr(config.offline_store, "broadcast_entity_rows", 0),
        )
        return ArrowSparkRetrievalJob(
            spark_session=spark,
            query=query,
            full_feature_names=full_feature_names,
            on_demand_feature_views=OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity_columns) - {event_timestamp_col}),
                min_event_timestamp=timestamp_range[0],
                max_event_timestamp=timestamp_range[1],
            ),
            config=config,
            result_partitions=result_partitions(len(entity_df), config.offline_store),
            broadcast_query=broadcast_query,
            entity_rows=len(entity_df),
        )


def result_partitions(entity_rows: int, store_config: SparkOfflineStoreConfig) -> int:
    """Partitions of a retrieval's result for ``entity_rows``: enough to keep each under
    ``rows_per_partition`` rows (``_partitioned`` never goes below the session's setting)."""
    per_partition = getattr(store_config, "rows_per_partition", ROWS_PER_PARTITION)  # Feast's own config has none
    return max(1, math.ceil(entity_rows / per_partition))


@contextmanager
def _partitioned(spark: pyspark.sql.SparkSession, partitions: int):
    """Run a query with at least ``partitions`` shuffle partitions, not coalesced; the
    session's settings are restored afterwards."""
    keys = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.coalescePartitions.enabled")
    before = {key: spark.conf.get(key, None) for key in keys}
    spark.conf.set(keys[0], str(max(partitions, int(before[keys[0]] or 1))))
    spark.conf.set(keys[1], "false")
    try:
        yield
    finally:
        for key, value in before.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


class ArrowSparkRetrievalJob(SparkRetrievalJob):
    """Feast's Spark retrieval job, collecting Arrow batches straight from Spark (Feast's
    job goes Spark -> pandas -> Arrow, and ``to_df`` then back to pandas), from a result
    of ``result_partitions`` partitions or more. With a ``broadcast_query``, that one runs
    first, and its result stands where it holds each of the ``entity_rows`` exactly once."""

    def __init__(self, *args, result_partitions: int = 1, broadcast_query: Optional[str] = None,
                 entity_rows: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._result_partitions = result_partitions
        self._broadcast_query = broadcast_query
        self._entity_rows = entity_rows
        self.used_broadcast_join: Optional[bool] = None  # known once the rows are collected

    def _to_arrow_internal(self, timeout: Optional[int] = None) -> pyarrow.Table:
        if self._should_use_staging_for_arrow():
            return super()._to_arrow_internal(timeout=timeout)
        if self._broadcast_query is not None:
            table = self.spark_session.sql(self._broadcast_query).toArrow()
            self.used_broadcast_join = each_row_once(table[ENTITY_ROW_ID], self._entity_rows)
            if self.used_broadcast_join:
                return table.drop_columns([ENTITY_ROW_ID])
            del table  # some entity row has several candidate rows, or none: the general join decides
            logger.info("the broadcast join did not give each entity row one row; running the point-in-time join")
        with _partitioned(self.spark_session, self._result_partitions):
            return self.to_spark_df().toArrow()


def each_row_once(row_ids: pyarrow.ChunkedArray, entity_rows: int) -> bool:
    """Whether ``row_ids`` (each a number below ``entity_rows``, from an inner join on the
    numbered entity rows) names every entity row exactly once."""
    return (
        len(row_ids) == entity_rows and row_ids.null_count == 0
        and pc.count_distinct(row_ids).as_py() == entity_rows
    )


def _spark_context(context: offline_utils.FeatureViewQueryContext, view: FeatureView) -> dict:
    """The context as a dict with Feast's Spark date-partition bounds and a key for its source."""
    fields = asdict(context)
    date_format = view.batch_source.date_partition_column_format
    # A batch feature view's transformation makes its own table; plain views of one source share it.
    fields["source_key"] = (
        context.table_subquery if isinstance(view, BatchFeatureView)
        else view.batch_source.to_proto().SerializeToString(deterministic=True)
    )

    def partition(timestamp: Optional[str]) -> Optional[str]:
        if timestamp is None or date_format is None:
            return None
        return datetime.fromisoformat(timestamp).strftime(date_format)

    fields["min_date_partition"] = partition(context.min_event_timestamp)
    fields["max_date_partition"] = partition(context.max_event_timestamp)
    return fields


def _output_name(view: dict, feature: str, full_feature_names: bool) -> str:
    mapped = view["field_mapping"].get(feature, feature)
    return f"{view['name']}__{mapped}" if full_feature_names else mapped


def scan_groups(views: list[dict], full_feature_names: bool) -> list[dict]:
    """Feature views merged by what their scan reads; each group lists (source column, output name)."""
    groups: dict[tuple, dict] = {}
    for view in views:
        key = (view["source_key"], *(repr(view[field]) for field in _SCAN_FIELDS))
        group = groups.setdefault(key, {
            **{field: view[field] for field in _SCAN_FIELDS}, "table_subquery": view["table_subquery"], "columns": [],
        })
        group["columns"].extend((feature, _output_name(view, feature, full_feature_names)) for feature in view["features"])
    return list(groups.values())


def build_queries(
    views: list[dict],
    entity_table: str,
    event_timestamp_col: str,
    entity_columns: list[str],
    full_feature_names: bool = False,
    filter_by_created_timestamp: bool = False,
    broadcast: bool = True,
) -> tuple[str, Optional[str]]:
    """The point-in-time query as one SQL statement (Feast's retrieval job runs it as is), and
    the broadcast statement (entity row id first, then the same columns) where ``broadcast``
    and every view reads one scan, else None."""
    output_names = list(entity_columns) + [
        _output_name(view, feature, full_feature_names) for view in views for feature in view["features"]
    ]
    groups = scan_groups(views, full_feature_names)
    for index, group in enumerate(groups):
        group["name"] = f"dfp_scan{index}"
    context = {
        "entity_table": entity_table, "entity_df_event_timestamp_col": event_timestamp_col, "groups": groups,
        "filter_by_created_timestamp": filter_by_created_timestamp, "entity_row_id": ENTITY_ROW_ID,
    }
    environment = Environment(loader=BaseLoader())
    query = environment.from_string(SINGLE_SCAN_POINT_IN_TIME_JOIN).render(
        **context, final_output_feature_names=output_names,
    )
    if not broadcast or len(groups) != 1:
        return query, None
    return query, environment.from_string(BROADCAST_POINT_IN_TIME_JOIN).render(
        **context, entity_columns=list(entity_columns),
    )


# What both statements below share: the entity rows with the timestamp the joins compare; the
# rows of one scan group that a point-in-time join may use (those at or before the latest entity
# timestamp and, with a TTL, after the earliest one's window opens); the join condition.
_MACROS = """
{% macro entity_rows() %}
    SELECT *, {{ entity_df_event_timestamp_col }} AS dfp_entity_timestamp
    FROM {{ entity_table }}
{% endmacro %}
{% macro source_rows(group) %}
    SELECT
        {{ group.timestamp_field }} AS event_timestamp,
        {{ group.created_timestamp_column ~ ' AS created_timestamp,' if group.created_timestamp_column else '' }}
        {% for selection in group.entity_selections %}{{ selection }}, {% endfor %}
        {% for column, output in group.columns %}{{ column }} AS {{ output }}{% if not loop.last %}, {% endif %}{% endfor %}
    FROM {{ group.table_subquery }}
    WHERE {{ group.timestamp_field }} <= '{{ group.max_event_timestamp }}'
    {% if group.created_timestamp_column %}
        AND {{ group.created_timestamp_column }} IS NOT NULL
    {% endif %}
    {% if group.date_partition_column %}
        AND {{ group.date_partition_column }} <= '{{ group.max_date_partition }}'
    {% endif %}
    {% if group.ttl != 0 %}
        AND {{ group.timestamp_field }} >= '{{ group.min_event_timestamp }}'
        {% if group.date_partition_column %}
            AND {{ group.date_partition_column }} >= '{{ group.min_date_partition }}'
        {% endif %}
    {% endif %}
{% endmacro %}
{% macro matches(group, source) %}
    {{ source }}.event_timestamp <= entity_rows.dfp_entity_timestamp
    {% if group.ttl != 0 %}
    AND {{ source }}.event_timestamp >= entity_rows.dfp_entity_timestamp - {{ group.ttl }} * interval '1' second
    {% endif %}
    {% if filter_by_created_timestamp and group.created_timestamp_column %}
    AND {{ source }}.created_timestamp <= entity_rows.dfp_entity_timestamp
    {% endif %}
    {% for entity in group.entities %}
    AND {{ source }}.{{ entity }} = entity_rows.{{ entity }}
    {% endfor %}
{% endmacro %}
"""

# One statement (one analysis of the ~480-column plan, no temporary views left behind).
# Per group: every entity row left-joined to the source rows with its keys at or before
# its timestamp (and within the TTL) -- a shuffled hash join that builds on the small
# entity side and streams the wide rows through one shuffle; then, per entity row, the
# rows with the latest event timestamp and the latest created timestamp (MAX windows on
# the join's partitioning: no second shuffle). As in Feast's template, ties are kept and,
# where the source has a created timestamp column, rows without one are ignored (Feast's
# dedup join drops them); an entity row without a match keeps one row of nulls. The
# final join on the entity row id broadcasts the entity rows.
SINGLE_SCAN_POINT_IN_TIME_JOIN = _MACROS + """
WITH entity_rows AS ({{ entity_rows() }}),
{% for group in groups %}
{% set g = group.name %}
{% set per_entity_row %}PARTITION BY {% for entity in group.entities %}{{ g }}__key{{ loop.index }}, {% endfor %}{{ g }}__row_id{% endset %}
{{ g }}__subquery AS ({{ source_rows(group) }}),
{{ g }}__matched AS (
    SELECT /*+ SHUFFLE_HASH(entity_rows) */
        {% for entity in group.entities %}entity_rows.{{ entity }} AS {{ g }}__key{{ loop.index }}, {% endfor %}
        entity_rows.{{ entity_row_id }} AS {{ g }}__row_id,
        subquery.event_timestamp AS {{ g }}__event_timestamp,
        {% if group.created_timestamp_column %}subquery.created_timestamp AS {{ g }}__created_timestamp,{% endif %}
        {% for column, output in group.columns %}subquery.{{ output }}{% if not loop.last %}, {% endif %}{% endfor %}
    FROM entity_rows
    LEFT JOIN {{ g }}__subquery AS subquery
    ON {{ matches(group, "subquery") }}
),
{{ g }}__latest_events AS (
    SELECT * FROM (
        SELECT *, MAX({{ g }}__event_timestamp) OVER ({{ per_entity_row }}) AS {{ g }}__latest_event_timestamp
        FROM {{ g }}__matched
    )
    WHERE {{ g }}__latest_event_timestamp IS NULL OR {{ g }}__event_timestamp = {{ g }}__latest_event_timestamp
),
{{ g }}__latest AS (
    {% if group.created_timestamp_column %}
    SELECT * FROM (
        SELECT *, MAX({{ g }}__created_timestamp) OVER ({{ per_entity_row }}) AS {{ g }}__latest_created_timestamp
        FROM {{ g }}__latest_events
    )
    WHERE {{ g }}__latest_created_timestamp IS NULL OR {{ g }}__created_timestamp = {{ g }}__latest_created_timestamp
    {% else %}
    SELECT * FROM {{ g }}__latest_events
    {% endif %}
){% if not loop.last %},{% endif %}
{% endfor %}
SELECT {{ final_output_feature_names | join(', ') }}
FROM entity_rows
{% for group in groups %}
JOIN {{ group.name }}__latest ON entity_rows.{{ entity_row_id }} = {{ group.name }}__latest.{{ group.name }}__row_id
{% endfor %}
"""

# The same rows in one pass without a shuffle, where each entity row has exactly one source row
# it may use (the usual case: one row per entity key): the entity rows are broadcast and every
# source row streams through an inner hash join. Where that holds, the one candidate is the
# latest, so no window is needed; the job checks it (each entity row id exactly once) and runs
# the statement above where it does not (several candidates, or none).
BROADCAST_POINT_IN_TIME_JOIN = _MACROS + """
{% set group = groups[0] %}
WITH entity_rows AS ({{ entity_rows() }}),
source_rows AS ({{ source_rows(group) }})
SELECT /*+ BROADCAST(entity_rows) */
    entity_rows.{{ entity_row_id }},
    {% for column in entity_columns %}entity_rows.{{ column }}, {% endfor %}
    {% for column, output in group.columns %}source_rows.{{ output }}{% if not loop.last %}, {% endif %}{% endfor %}
FROM source_rows
JOIN entity_rows
ON {{ matches(group, "source_rows") }}
"""
