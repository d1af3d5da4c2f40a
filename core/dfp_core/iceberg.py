"""Writing and inspecting Iceberg tables that live in a lakeFS ref.

Why ``write.data.path``: a HadoopCatalog keeps the table location it was
created with (``s3a://<repo>/<first-run-branch>/...``) for ever, and ignores a
new LOCATION on replace. Every write therefore points ``write.data.path`` at
the branch being written, so data files land where lakeFS accepts writes.
Metadata files always go under the catalog path of the ref being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dfp_core.errors import DatasetError
from dfp_core.lakefs_ops import LakeFS
from dfp_core.spark import ICEBERG_TABLE_PROPERTIES, register_ref_catalog, session_warehouse_prefix, warehouse_uri

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

# Iceberg's table property for the size of its read splits (bytes).
READ_SPLIT_SIZE_PROPERTY = "read.split.target-size"


@dataclass(frozen=True)
class TableRef:
    repo: str
    ref: str
    namespace: str
    name: str

    @property
    def short(self) -> str:
        return f"{self.namespace}.{self.name}"


def qualified(spark: "SparkSession", table: TableRef) -> str:
    catalog = register_ref_catalog(spark, table.repo, table.ref)
    return f"{catalog}.{table.namespace}.{table.name}"


def create_namespace(spark: "SparkSession", repo: str, ref: str, namespace: str) -> None:
    """``namespace`` in the catalog of ``repo``@``ref``, if it is not there yet."""
    catalog = register_ref_catalog(spark, repo, ref)
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {catalog}.{namespace}")


def write_table(
    spark: "SparkSession",
    lakefs: LakeFS,
    df: "DataFrame",
    table: TableRef,
    properties: dict[str, str] | None = None,
) -> int:
    """Create or atomically replace ``table`` on a *branch* with ``df``'s rows.

    Returns the new Iceberg snapshot id. History is kept: earlier snapshots stay
    readable by id. Raises ReadOnlyRefError when ``table.ref`` is not a branch.
    """
    lakefs.require_branch(table.repo, table.ref)
    name = qualified(spark, table)
    create_namespace(spark, table.repo, table.ref, table.namespace)
    data_path = f"{warehouse_uri(table.repo, table.ref, session_warehouse_prefix(spark))}/{table.namespace}/{table.name}/data"
    props = {**ICEBERG_TABLE_PROPERTIES, **(properties or {}), "write.data.path": data_path}
    view = f"dfp_src_{table.namespace}_{table.name}"
    df.createOrReplaceTempView(view)
    props_sql = ", ".join(f"'{k}'='{_escape(v)}'" for k, v in props.items())
    try:
        spark.sql(f"CREATE OR REPLACE TABLE {name} USING iceberg TBLPROPERTIES ({props_sql}) AS SELECT * FROM {view}")
    finally:
        spark.catalog.dropTempView(view)
    return current_snapshot_id(spark, table)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def current_snapshot_id(spark: "SparkSession", table: TableRef) -> int:
    """The snapshot the table's current metadata points at (Iceberg's ``main`` ref)."""
    snapshot = iceberg_table(spark, table).snapshot("main")
    if snapshot is None:
        raise DatasetError(f"table {table.short} at {table.ref} has no snapshot")
    return int(snapshot.snapshotId())


def has_snapshot(spark: "SparkSession", table: TableRef, snapshot_id: int) -> bool:
    return iceberg_table(spark, table).snapshot(int(snapshot_id)) is not None


def iceberg_table(spark: "SparkSession", table: TableRef):
    """Iceberg's own table object (through Py4J), re-read from storage. Its refs and
    snapshots answer without a Spark job; a query on a metadata table (``.refs``,
    ``.snapshots``) plans and runs one, about half a second each."""
    jtable = spark._jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, qualified(spark, table))
    jtable.refresh()
    return jtable


def table_exists(spark: "SparkSession", table: TableRef) -> bool:
    """Whether the catalog has the table (a catalog lookup, no Spark job)."""
    try:
        return bool(spark.catalog.tableExists(qualified(spark, table)))
    except Exception:  # noqa: BLE001 - a ref whose namespace or warehouse is missing has no table
        return False


def table_properties(spark: "SparkSession", table: TableRef) -> dict[str, str]:
    name = qualified(spark, table)
    return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {name}").collect()}


def data_file_paths(spark: "SparkSession", table: TableRef) -> list[str]:
    """Every data file of every snapshot still referenced by the table."""
    name = qualified(spark, table)
    return [row[0] for row in spark.sql(f"SELECT DISTINCT file_path FROM {name}.all_data_files").collect()]
