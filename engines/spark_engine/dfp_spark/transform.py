"""The Spark transform: raw KronoDroid CSV parts -> typed staging tables,
a quarantine of rejected rows, the training fact table and a family dimension.

Pure DataFrame logic; reading from and writing to lakeFS is the caller's job.
Every input row ends up in exactly one place:
  input rows = fct rows + quarantined rows + dropped exact duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType
import pyarrow as pa

from dfp_core.kronodroid import schema
from dfp_core.splits import SplitSpec, spark_sample_id_sql, spark_split_sql
from dfp_core.kronodroid.arrow_typing import CORRUPT_RECORD, make_typer, output_fields, raw_column
from dfp_core.kronodroid.raw_files import CsvPart

EPOCH = "1970-01-01 00:00:00"


def read_part(spark: SparkSession, uri: str, part: CsvPart, run_id: str) -> DataFrame:
    """One CSV part, all columns as strings under positional names, plus provenance.

    multiLine CSV files are not splittable, so each file is one partition and
    monotonically_increasing_id() numbers its rows in file order. A row whose cell
    count differs from the header keeps its text in ``CORRUPT_RECORD`` (Spark would
    otherwise pad or cut it silently); the typer rejects it as ``malformed_row``.
    """
    struct = StructType([StructField(raw_column(i), StringType()) for i in range(len(part.columns))]
                        + [StructField(CORRUPT_RECORD, StringType())])
    df = (
        spark.read.option("header", True).option("multiLine", True).option("escape", '"')
        .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_RECORD).option("encoding", "UTF-8")
        .option("ignoreLeadingWhiteSpace", True).option("ignoreTrailingWhiteSpace", True)
        .schema(struct).csv(uri)
    )
    # "*" is the raw columns then CORRUPT_RECORD, in the schema's order: one column object,
    # where naming ~500 costs a Py4J round trip each.
    return df.select(
        F.lit(part.source_file).alias("source_file"),
        F.lit(part.member).alias("source_member"),
        (F.monotonically_increasing_id() + 1).alias("source_row"),
        F.lit(run_id).alias("run_id"),
        "*",
    )


def type_part(raw: DataFrame, part: CsvPart) -> DataFrame:
    """Typed canonical columns, the ``reasons`` a row is rejected and their detail."""
    out = pa.schema(output_fields(part.columns))
    typer = make_typer(part.columns, part.data_source, part.expected_label)
    typed = raw.mapInArrow(typer, from_arrow_schema(out))
    return typed.withColumn("sample_id", F.expr(spark_sample_id_sql()))


def decide(typed: DataFrame) -> DataFrame:
    """Add ``status`` (fct | quarantine | duplicate_dropped) and ``reason`` to every row.

    Rows that failed typing are quarantined with their first reason. Among valid
    rows of one sample_id: conflicting labels quarantine the whole group; the
    first row (archive order) is kept; later identical rows are dropped as exact
    duplicates; later differing rows are quarantined as duplicate_sample_id.
    """
    typed = typed.withColumn("typing_ok", F.size("reasons") == 0)
    bad = (
        typed.filter(~F.col("typing_ok"))
        .withColumn("status", F.lit("quarantine"))
        .withColumn("reason", F.col("reasons")[0])
    )
    valid = typed.filter(F.col("typing_ok"))
    group = Window.partitionBy("sample_id")
    ordered = group.orderBy("source_file", "source_member", "source_row")
    content = F.xxhash64(
        "label", "malware_family", "package_name", "earliest_mod_date", "latest_mod_date", *schema.FEATURE_COLUMNS
    )
    valid = (
        valid.withColumn("_content", content)
        .withColumn("_labels", F.size(F.collect_set("label").over(group)))
        .withColumn("_rank", F.row_number().over(ordered))
        .withColumn("_first_content", F.first("_content").over(ordered))
    )
    status = (
        F.when(F.col("_labels") > 1, F.lit("quarantine"))
        .when(F.col("_rank") == 1, F.lit("fct"))
        .when(F.col("_content") == F.col("_first_content"), F.lit("duplicate_dropped"))
        .otherwise(F.lit("quarantine"))
    )
    reason = (
        F.when(F.col("_labels") > 1, F.lit("conflicting_label"))
        .when((F.col("_rank") > 1) & (F.col("_content") != F.col("_first_content")), F.lit("duplicate_sample_id"))
    )
    detail = F.when(F.col("_labels") > 1, F.lit("sha256 occurs with labels 0 and 1")).when(
        reason == "duplicate_sample_id", F.lit("same sample_id as an earlier row with different values")
    )
    valid = (
        valid.withColumn("status", status).withColumn("reason", reason)
        .withColumn("detail", F.coalesce(detail, F.col("detail")))
        .withColumn("reasons", F.when(reason.isNotNull(), F.array(reason)).otherwise(F.col("reasons")))
        .drop("_content", "_labels", "_rank", "_first_content")
    )
    return valid.unionByName(bad)


def staging_frame(decided: DataFrame, data_source: str) -> DataFrame:
    """Every row of one source that passed typing (duplicates included), typed."""
    drop = ("reasons", "detail", "raw_record", "status", "reason", "typing_ok")
    frame = decided.filter((F.col("data_source") == data_source) & F.col("typing_ok"))
    first = ["sample_id", "sha256", "data_source", "label", "malware_family", "package_name"]
    rest = [c for c in frame.columns if c not in first and c not in drop]
    return frame.select(*first, *rest)


def quarantine_frame(decided: DataFrame) -> DataFrame:
    return decided.filter(F.col("status") == "quarantine").select(
        "run_id", "data_source", "source_file", "source_member", "source_row", "sha256", "sample_id",
        "reason", "reasons", "detail", "raw_record",
    )


def fct_frame(decided: DataFrame, split: SplitSpec) -> DataFrame:
    kept = decided.filter(F.col("status") == "fct")
    sample_date = F.coalesce("latest_mod_date", "earliest_mod_date")
    with_dates = kept.withColumn("sample_date", sample_date).withColumn("sample_year", F.year("sample_date"))
    return with_dates.select(
        "sample_id", "sha256", "data_source", "label", "malware_family", "package_name",
        "sample_date", "sample_year",
        # Feast needs a timestamp on every row; undated apps get the epoch.
        F.coalesce(F.to_timestamp("sample_date"), F.lit(EPOCH).cast("timestamp")).alias("event_timestamp"),
        F.expr(spark_split_sql(split)).alias("dataset_split"),
        *schema.FEATURE_COLUMNS,
    )


def families_frame(fct: DataFrame) -> DataFrame:
    malware = fct.filter((F.col("label") == 1) & F.col("malware_family").isNotNull())
    counts = [
        F.sum(F.when(F.col("data_source") == src, 1).otherwise(0)).cast("long").alias(f"{src}_count")
        for src in schema.DATA_SOURCES
    ]
    return malware.groupBy("malware_family").agg(
        *counts,
        F.count(F.lit(1)).cast("long").alias("total_count"),
        F.min("sample_year").alias("first_year"),
        F.max("sample_year").alias("last_year"),
    )


@dataclass
class TransformFrames:
    staging: dict[str, DataFrame]
    quarantine: DataFrame
    fct: DataFrame
    families: DataFrame
    decided: DataFrame


def build(spark: SparkSession, parts: list[tuple[str, CsvPart]], run_id: str, split: SplitSpec) -> TransformFrames:
    """All output frames from (uri, part) pairs.

    The typed rows and the decisions are materialised (local checkpoints):
    without that, every downstream write re-plans a ~500-column lineage with
    higher-order functions, and Spark's optimiser spends minutes on it.
    """
    typed = None
    for uri, part in parts:
        frame = type_part(read_part(spark, uri, part, run_id), part)
        typed = frame if typed is None else typed.unionByName(frame, allowMissingColumns=True)
    typed = typed.localCheckpoint(eager=True)
    decided = decide(typed).localCheckpoint(eager=True)
    sources = sorted({p.data_source for _, p in parts})
    fct = fct_frame(decided, split)
    return TransformFrames(
        staging={src: staging_frame(decided, src) for src in sources},
        quarantine=quarantine_frame(decided),
        fct=fct,
        families=families_frame(fct),
        decided=decided,
    )


def row_accounting(decided: DataFrame) -> dict:
    """Counts that must reconcile: input = fct + quarantine + duplicates dropped,
    overall and per CSV part (``rows_by_part``, keyed ``source_file:source_member``)."""
    rows = decided.groupBy("source_file", "source_member", "status", "reason").count().collect()
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    by_part: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["count"]
        part = f"{row['source_file']}:{row['source_member']}"
        by_part[part] = by_part.get(part, 0) + row["count"]
        if row["status"] == "quarantine":
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["count"]
    total = sum(by_status.values())
    return {
        "input_rows": total,
        "fct_rows": by_status.get("fct", 0),
        "quarantined_rows": by_status.get("quarantine", 0),
        "duplicates_dropped": by_status.get("duplicate_dropped", 0),
        "quarantine_by_reason": dict(sorted(by_reason.items())),
        "rows_by_part": dict(sorted(by_part.items())),
    }
