"""A class-data-sharing archive for the local Spark driver's JVM.

A local Spark session's JVM loads, parses and verifies some ten thousand classes (Spark, Hadoop,
Iceberg, the AWS SDK) before it answers: about 2 s of a 5.5 s session start and 1 s of its
first job on 2 cores, paid by every ``dfp transform`` and ``dfp train`` and by each step of the pipeline.
Java's AppCDS keeps those classes ready in an archive that the JVM maps at start. ``make setup``
builds one from a short warm-up job that touches what our jobs touch (a wide CSV, an Arrow UDF,
an Iceberg table of Avro files, S3A); every later local session whose JVM and classpath match
maps it. The JVM checks the match itself and quietly starts without the archive when they
differ; the file name is keyed by them too, so a new JDK or jar set gets its own archive.

A truncated archive crashes the JVM at start (SIGBUS), so one is only ever put in place whole:
written under a temporary name by a JVM that exited cleanly, then mapped by a new JVM that runs
a job with it, and only then renamed into place.

  python -m dfp_core.spark_class_archive        # build it if missing (make setup does)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from dfp_core.settings import LakeFSSettings, SparkSettings

# Quiet: a JVM that cannot use the archive (another JDK build, a changed classpath) says so on
# stderr at every start; it still starts, only without the archive.
_QUIET = ("-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off")


def _jvm_options(archive_flag: str) -> str:
    return " ".join((archive_flag, *_QUIET))


def map_options(path: Path) -> str:
    """The JVM options that map the archive at ``path``."""
    return _jvm_options(f"-XX:SharedArchiveFile={path}")
_JVM_EXIT_S = 300  # the archive is written as the JVM exits: ~10 s here


def java_binary(settings: SparkSettings) -> Path | None:
    """The JVM PySpark starts: $JAVA_HOME/bin/java, else java on the PATH (None: neither)."""
    if settings.java_home and os.access(os.path.join(settings.java_home, "bin", "java"), os.X_OK):
        return Path(settings.java_home, "bin", "java").resolve()
    found = shutil.which("java")
    return Path(found).resolve() if found else None


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def archive_path(settings: SparkSettings) -> Path | None:
    """Where the archive for this JVM and classpath lives, or None where none applies: the
    archive is off, the driver is not started here (not local mode), or the jars are baked
    into an image's Spark."""
    if settings.class_archive_dir is None or not settings.master.startswith("local") or settings.jars_provided:
        return None
    java = java_binary(settings)
    if java is None:
        return None
    # Deferred (pyspark's jars and our locked ones are only listed here, on a session start).
    import pyspark

    from dfp_core.spark_jars import locked_jars

    spark_jars = sorted(Path(pyspark.__file__).parent.joinpath("jars").glob("*.jar"))
    # Our jars by folder and locked digest: a new lock gets a new archive in the same folder.
    parts = [_identity(java), pyspark.__version__, *map(_identity, spark_jars), str(settings.jars_dir),
             *(f"{path} {digest}" for path, digest in locked_jars())]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return settings.class_archive_dir / f"spark-{key}.jsa"


# C1 only: SparkSettings.driver_jit "quick".
QUICK_JIT_OPTION = "-XX:TieredStopAtLevel=1"


def driver_java_options(settings: SparkSettings) -> str | None:
    """The local driver JVM's options: map the archive where there is one, compile with C1
    only where ``settings.driver_jit`` is "quick" (settled by ``SparkSettings.for_input_rows``);
    None when neither applies."""
    options = []
    path = archive_path(settings)
    if path is not None and path.is_file():
        options.append(map_options(path))
    if settings.driver_jit == "quick" and settings.master.startswith("local"):
        options.append(QUICK_JIT_OPTION)
    return " ".join(options) or None


def _warm_up(spark, workdir: Path) -> None:
    """Touch the classes our jobs load: a wide CSV read, an Arrow map, an Iceberg table of Avro
    files written, read back and listed, and an S3A filesystem (built, never connected)."""
    # Deferred (pandas, pyarrow): only the archive's build runs this.
    import pandas as pd
    import pyarrow as pa

    from dfp_core.spark import ICEBERG_TABLE_PROPERTIES

    columns = [f"c{i}" for i in range(480)]
    pd.DataFrame([[i % 7] * len(columns) for i in range(64)], columns=columns).to_csv(workdir / "in.csv", index=False)
    raw = spark.read.option("header", "true").csv(str(workdir / "in.csv"))

    def as_numbers(batches):
        for batch in batches:
            yield pa.RecordBatch.from_arrays([c.cast(pa.float64()) for c in batch.columns], names=batch.schema.names)

    typed = raw.mapInArrow(as_numbers, ", ".join(f"{c} double" for c in columns))
    properties = ", ".join(f"'{k}'='{v}'" for k, v in ICEBERG_TABLE_PROPERTIES.items())
    spark.sql("CREATE NAMESPACE IF NOT EXISTS warm.db")
    typed.createOrReplaceTempView("typed")
    spark.sql(f"CREATE TABLE warm.db.t USING iceberg TBLPROPERTIES ({properties}) AS SELECT * FROM typed")
    spark.sql("INSERT INTO warm.db.t SELECT * FROM typed")
    spark.table("warm.db.t").groupBy("c0").count().toPandas()
    # A point-in-time join as Feast's Spark offline store writes it, from a pandas entity frame.
    entities = pd.DataFrame({"c0": [0.0, 1.0, 2.0], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")})
    spark.createDataFrame(entities).createOrReplaceTempView("entities")
    spark.sql("""
        WITH latest AS (
            SELECT e.c0, e.event_timestamp, t.c1,
                   ROW_NUMBER() OVER (PARTITION BY e.c0 ORDER BY t.c2 DESC) AS row_number
            FROM entities e INNER JOIN warm.db.t t ON e.c0 = t.c0)
        SELECT e.*, l.c1 FROM entities e LEFT JOIN (SELECT * FROM latest WHERE row_number = 1) l
        ON e.c0 = l.c0 ORDER BY e.c0""").toPandas()
    spark.sql("SELECT snapshot_id FROM warm.db.t.snapshots").collect()
    spark.sql("SELECT file_path FROM warm.db.t.files").collect()
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    jvm.org.apache.hadoop.fs.FileSystem.newInstance(jvm.java.net.URI("s3a://warm-up/"), conf).close()


def _stop_and_wait(spark) -> int:
    """Stop the session and its JVM; the JVM's exit code (it writes the archive as it exits)."""
    # Deferred (PySpark): only a build starts a JVM here.
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    gateway.shutdown()
    gateway.proc.stdin.close()  # the JVM exits when its Python goes
    try:
        return gateway.proc.wait(timeout=_JVM_EXIT_S)
    finally:
        SparkContext._gateway = SparkContext._jvm = None


# Run in a new process: a session whose JVM maps the archive, then a job; it prints what it mapped.
_TRY = """
import json, os, sys
from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_core.spark import spark_session
from dfp_core.spark_class_archive import map_options
archive = sys.argv[1]
spark = spark_session("dfp-class-archive-check", LakeFSSettings(endpoint="http://127.0.0.1:9",
    access_key_id="check", secret_access_key="check"), SparkSettings.from_env(os.environ),
    {"spark.driver.extraJavaOptions": map_options(archive)})
pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
mapped = None  # unknown without /proc: the job ran, so the JVM took it or left it
if os.path.exists(f"/proc/{pid}/maps"):
    with open(f"/proc/{pid}/maps") as maps:
        mapped = any(line.rstrip().endswith(archive) for line in maps)
print(json.dumps({"mapped": mapped, "rows": spark.range(3).count()}))
"""


def _try_in_a_new_jvm(archive: Path) -> str | None:
    """None when a new local session maps ``archive`` and runs a job with it; else what went wrong."""
    # In a scratch folder: a JVM that crashes leaves its hs_err_pid*.log in its working folder.
    with tempfile.TemporaryDirectory(prefix="dfp-class-archive-check-") as scratch:
        done = subprocess.run([sys.executable, "-c", _TRY, str(archive.resolve())], capture_output=True, text=True,
                              timeout=_JVM_EXIT_S, cwd=scratch, env={**os.environ, "DFP_SPARK_CLASS_ARCHIVE": "off"})
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return f"exit {done.returncode}: {lines[-1][:200] if lines else 'no output'}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if seen["mapped"] is False or seen["rows"] != 3:
        return f"the JVM did not map it ({seen})"
    return None


def build(settings: SparkSettings, log: Callable[[str], None] = print) -> Path | None:
    """Build the archive for ``settings`` if it is missing; its path, or None where none
    applies. Call it in a process with no Spark JVM yet: the JVM it starts writes the archive."""
    # Deferred (PySpark): only a build starts a JVM here.
    from pyspark import SparkContext

    from dfp_core.spark import spark_session

    target = archive_path(settings)
    if target is None or target.is_file():
        return target
    if SparkContext._gateway is not None:
        raise RuntimeError("a Spark JVM runs in this process already; build the archive in a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dfp-class-archive-") as tmp:
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        # A dummy endpoint: the warm-up builds an S3A client and never connects.
        lakefs = LakeFSSettings(endpoint="http://127.0.0.1:9", access_key_id="warm-up", secret_access_key="warm-up")
        spark = spark_session("dfp-class-archive", lakefs, settings, {
            "spark.driver.extraJavaOptions": _jvm_options(f"-XX:ArchiveClassesAtExit={partial}"),
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.catalog.warm": "org.apache.iceberg.spark.SparkCatalog",
            "spark.sql.catalog.warm.type": "hadoop",
            "spark.sql.catalog.warm.warehouse": Path(tmp, "warehouse").as_uri(),
        })
        try:
            _warm_up(spark, Path(tmp))
        except BaseException:
            _stop_and_wait(spark)
            partial.unlink(missing_ok=True)  # the JVM writes one on any exit: not of a whole warm-up
            raise
        code = _stop_and_wait(spark)
        if code != 0 or not partial.is_file() or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"the JVM exited with {code} and left no class archive")
        problem = _try_in_a_new_jvm(partial)
        if problem:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"a JVM could not use the new class archive: {problem}")
        os.replace(partial, target)
    log(f"Spark class archive: {target} ({target.stat().st_size >> 20} MB, {time.monotonic() - started:.0f}s)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    settings = SparkSettings.from_env(os.environ)
    existing = archive_path(settings)
    if existing is not None and existing.is_file():
        print(f"Spark class archive: {existing} (up to date)", file=sys.stderr)
        return 0
    try:
        path = build(settings, log=lambda line: print(line, file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - an optimisation: Spark runs without it
        print(f"warning: no Spark class archive ({' '.join(str(exc).split())[:300]}); "
              "local Spark sessions start without it, a few seconds slower", file=sys.stderr)
        return 0
    if path is None:
        print("Spark class archive: not used here (off, not local mode, or no java)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
