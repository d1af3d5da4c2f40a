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

from dfp_core import schema
from dfp_core.splits import SplitSpec, spark_sample_id_sql, spark_split_sql
from dfp_spark.raw_inputs import CsvPart

DATE_FORMATS = ("yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd", "yyyy/MM/dd")
EPOCH = "1970-01-01 00:00:00"

# Quarantine reason codes, in the order they are reported.
REASONS = (
    "missing_feature_value", "non_numeric_feature", "negative_count", "invalid_label",
    "label_archive_mismatch", "invalid_sha256", "unparsable_date", "conflicting_label",
    "duplicate_sample_id",
)
PROVENANCE = ("source_file", "source_member", "source_row", "run_id")


def _position(index: int) -> str:
    # Raw names are not usable as Spark columns: Spark is case-insensitive and
    # KronoDroid has both syscall ``reboot`` and permission ``REBOOT``.
    return f"_c{index}"


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _as_long(col: str) -> str:
    """Integer value of a string cell, or NULL when it is not an integer ("12.0" is 12)."""
    as_double = f"try_cast({col} AS DOUBLE)"
    return (
        f"coalesce(try_cast({col} AS BIGINT), "
        f"CASE WHEN {as_double} = floor({as_double}) AND abs({as_double}) < 9.0E15 THEN CAST({as_double} AS BIGINT) END)"
    )


def _as_date(col: str) -> str:
    return "coalesce(" + ", ".join(f"try_to_timestamp({col}, {_sql_str(f)})" for f in DATE_FORMATS) + ")"


def _names_where(condition: str, names: list[str]) -> str:
    """Names of the columns (of an array ``__raw``/``__typed`` pair) meeting ``condition``."""
    literal = "array(" + ", ".join(_sql_str(n) for n in names) + ")"
    return f"transform(filter(sequence(0, {len(names) - 1}), i -> {condition}), i -> {literal}[i])"


def read_part(spark: SparkSession, uri: str, part: CsvPart, run_id: str) -> DataFrame:
    """One CSV part, all columns as strings (trimmed, empty -> NULL), plus provenance.

    multiLine CSV files are not splittable, so each file is one partition and
    monotonically_increasing_id() numbers its rows in file order.
    """
    from pyspark.sql.types import StringType, StructField, StructType

    struct = StructType([StructField(_position(i), StringType()) for i in range(len(part.columns))])
    df = (
        spark.read.option("header", True).option("multiLine", True).option("escape", '"')
        .option("mode", "PERMISSIVE").option("encoding", "UTF-8")
        .option("ignoreLeadingWhiteSpace", True).option("ignoreTrailingWhiteSpace", True)
        .schema(struct).csv(uri)
    )
    return df.select(
        F.lit(part.source_file).alias("source_file"),
        F.lit(part.member).alias("source_member"),
        (F.monotonically_increasing_id() + 1).alias("source_row"),
        F.lit(run_id).alias("run_id"),
        *[F.col(_position(i)) for i in range(len(part.columns))],
    )


def extra_column_name(raw: str) -> str:
    return "extra_" + schema._snake(raw)


def type_part(raw: DataFrame, part: CsvPart) -> DataFrame:
    """Typed canonical columns, ``reasons`` the row is rejected, and their detail.

    Built as SQL text: a few thousand DataFrame-API calls through py4j made
    planning slower than the job itself.
    """
    pos = {c: _position(i) for i, c in enumerate(part.columns)}
    present = [c for c in schema.RAW_FEATURES if c in pos]
    # Quoted strings keep their whitespace (Package ends with a newline).
    text = {c: f"nullif(regexp_replace({pos[c]}, '^\\\\s+|\\\\s+$', ''), '')" for c in pos}

    typed = []
    for raw_name, canon in zip(schema.RAW_FEATURES, schema.FEATURE_COLUMNS):
        typed.append(f"{_as_long(pos[raw_name])} AS {canon}" if raw_name in pos else f"CAST(NULL AS BIGINT) AS {canon}")
    dates = {}
    date_checks = []
    for raw_name, canon in schema.DATE_COLUMNS.items():
        if raw_name in pos:
            ts = _as_date(text[raw_name])
            # 1980-01-01 is KronoDroid's "unknown date".
            dates[canon] = f"CASE WHEN to_date({ts}) <> DATE'{schema.SENTINEL_DATE}' THEN to_date({ts}) END"
            date_checks.append(f"IF({text[raw_name]} IS NOT NULL AND {ts} IS NULL, {_sql_str(raw_name)}, NULL)")
    label_text = text[schema.LABEL]
    optional = {
        "malware_family": text.get(schema.FAMILY, "CAST(NULL AS STRING)"),
        "package_name": text.get(schema.PACKAGE, "CAST(NULL AS STRING)"),
        "scanners": _as_long(pos["Scanners"]) if "Scanners" in pos else "CAST(NULL AS BIGINT)",
        "detection_ratio": f"try_cast({pos['Detection_Ratio']} AS DOUBLE)" if "Detection_Ratio" in pos else "CAST(NULL AS DOUBLE)",
    }
    stage1 = [
        "source_file", "source_member", "source_row", "run_id",
        f"{_sql_str(part.data_source)} AS data_source",
        f"lower({text[schema.SHA256]}) AS sha256",
        f"{text[schema.SHA256]} AS __sha_text",
        f"CASE WHEN {label_text} IN ('0', '1', '0.0', '1.0') THEN CAST(CAST({label_text} AS DOUBLE) AS INT) END AS label",
        f"{label_text} AS __label_text",
        *[f"{expr} AS {name}" for name, expr in optional.items()],
        *typed,
        f"{dates.get('earliest_mod_date', 'CAST(NULL AS DATE)')} AS earliest_mod_date",
        f"{dates.get('latest_mod_date', 'CAST(NULL AS DATE)')} AS latest_mod_date",
        *[f"{text[c]} AS {schema.canonical_name(c)}" for c in schema.KNOWN_EXTRAS if c in pos],
        *[f"{text[c]} AS {extra_column_name(c)}" for c in part.columns if c not in schema.KNOWN_RAW],
        "array(" + ", ".join(f"nullif({pos[c]}, '')" for c in present) + ") AS __raw",
        "array_compact(array(" + (", ".join(date_checks) or "CAST(NULL AS STRING)") + ")) AS __bad_dates",
        "to_json(map(" + ", ".join(f"{_sql_str(c)}, {pos[c]}" for c in part.columns) + ")) AS __raw_record",
    ]
    df = raw.selectExpr(*stage1)

    names = [schema.canonical_name(c) for c in present]
    expected = "NULL" if part.expected_label is None else str(part.expected_label)
    missing = _names_where("__raw[i] IS NULL", names)
    non_numeric = _names_where("__raw[i] IS NOT NULL AND __typed[i] IS NULL", names)
    negative = _names_where("__typed[i] < 0", names)
    checks = [
        f"array({', '.join(names)}) AS __typed",
    ]
    df = df.selectExpr("*", *checks).selectExpr(
        "*", f"{missing} AS __missing", f"{non_numeric} AS __non_numeric", f"{negative} AS __negative",
    )
    reasons = (
        "array_compact(array("
        "IF(size(__missing) > 0, 'missing_feature_value', NULL), "
        "IF(size(__non_numeric) > 0, 'non_numeric_feature', NULL), "
        "IF(size(__negative) > 0, 'negative_count', NULL), "
        "IF(label IS NULL, 'invalid_label', NULL), "
        f"IF(label IS NOT NULL AND {expected} IS NOT NULL AND label <> {expected}, 'label_archive_mismatch', NULL), "
        "IF(__sha_text IS NULL OR NOT (__sha_text RLIKE '^[0-9A-Fa-f]{64}$'), 'invalid_sha256', NULL), "
        "IF(size(__bad_dates) > 0, 'unparsable_date', NULL)))"
    )
    detail = (
        "concat_ws('; ', "
        "IF(size(__missing) > 0, concat('empty: ', array_join(__missing, ',')), NULL), "
        "IF(size(__non_numeric) > 0, concat('non-numeric: ', array_join(__non_numeric, ',')), NULL), "
        "IF(size(__negative) > 0, concat('negative: ', array_join(__negative, ',')), NULL), "
        "IF(label IS NULL, concat('label: ', coalesce(__label_text, '<empty>')), NULL), "
        "IF(size(__bad_dates) > 0, concat('bad date: ', array_join(__bad_dates, ',')), NULL))"
    )
    df = df.selectExpr("*", f"{reasons} AS reasons", f"{detail} AS detail")
    internal = [c for c in df.columns if c.startswith("__")]
    df = df.withColumn("raw_record", F.when(F.size("reasons") > 0, F.col("__raw_record"))).drop(*internal)
    return df.withColumn("sample_id", F.expr(spark_sample_id_sql()))


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
    """Counts that must reconcile: input = fct + quarantine + duplicates dropped."""
    rows = decided.groupBy("status", "reason").count().collect()
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["count"]
        if row["status"] == "quarantine":
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["count"]
    total = sum(by_status.values())
    return {
        "input_rows": total,
        "fct_rows": by_status.get("fct", 0),
        "quarantined_rows": by_status.get("quarantine", 0),
        "duplicates_dropped": by_status.get("duplicate_dropped", 0),
        "quarantine_by_reason": dict(sorted(by_reason.items())),
    }
