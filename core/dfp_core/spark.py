"""Spark sessions wired to Iceberg catalogs that live inside lakeFS refs.

Every lakeFS ref (branch, tag or commit id) gets its own Iceberg HadoopCatalog
whose warehouse is ``s3a://<repo>/<ref>/<prefix>`` through the lakeFS S3
gateway. A catalog is registered at runtime under a name derived from the repo
and ref, so one session can read several refs side by side.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import TYPE_CHECKING, Mapping

from py4j.protocol import Py4JJavaError

from dfp_core.errors import ConfigError
from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_core.spark_class_archive import driver_java_options, java_binary

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

# The session remembers its warehouse folder, so that every catalog registered on it agrees.
WAREHOUSE_PREFIX_CONF = "spark.dfp.iceberg.warehousePrefix"
ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
# The S3A key pair. PySpark hands a new JVM the session's settings as `--conf k=v` arguments
# of spark-submit, where any local user reads them (ps, /proc/<pid>/cmdline): these go to the
# JVM over the authenticated Py4J connection once it runs instead.
SECRET_CONF_KEYS = frozenset({"spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key"})
# Table properties every table we create carries: Avro data files, format v2.
ICEBERG_TABLE_PROPERTIES = {
    "format-version": "2",
    "write.format.default": "avro",
    "write.delete.format.default": "avro",
    "write.avro.compression-codec": "zstd",
}


def require_java(settings: SparkSettings) -> None:
    if java_binary(settings) is None:
        raise ConfigError("Java (17 or newer) is required by Spark but was not found; install a JDK or set JAVA_HOME")


def s3a_conf(lakefs: LakeFSSettings) -> dict[str, str]:
    """Hadoop S3A settings that point at the lakeFS S3 gateway (path style)."""
    lakefs.require_credentials()
    secure = lakefs.endpoint.startswith("https://")
    return {
        "fs.s3a.endpoint": lakefs.endpoint,
        "fs.s3a.endpoint.region": "us-east-1",
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(secure).lower(),
        "fs.s3a.access.key": lakefs.access_key_id or "",
        "fs.s3a.secret.key": lakefs.secret_access_key or "",
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        # lakeFS buckets are repositories; no bucket probing or creation.
        "fs.s3a.bucket.probe": "0",
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.connection.maximum": "64",
        "fs.s3a.threads.max": "32",
    }


def base_conf(spark: SparkSettings, lakefs: LakeFSSettings, app_name: str) -> dict[str, str]:
    # Deferred (57 ms of imports): it loads with the Spark session.
    from dfp_core.spark_jars import jar_paths

    conf = {
        "spark.app.name": app_name,
        WAREHOUSE_PREFIX_CONF: spark.warehouse_prefix,
        # Spark's UI listens on every interface; it is off unless asked for (DFP_SPARK_UI=1).
        "spark.ui.enabled": str(spark.ui_enabled).lower(),
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.driver.memory": spark.driver_memory,
        "spark.driver.maxResultSize": spark.max_result_size,
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.ansi.enabled": "false",
    }
    if spark.master.startswith("local"):
        # Python workers run in this interpreter's environment, not a bare python3 on PATH.
        conf["spark.pyspark.python"] = conf["spark.pyspark.driver.python"] = sys.executable
    # In a Spark-on-Kubernetes image the jars are baked into $SPARK_HOME/jars.
    if not spark.jars_provided:
        conf["spark.jars"] = ",".join(str(p) for p in jar_paths(spark.jars_dir))
    # The driver's classes come ready from `make setup`'s archive (seconds off each start).
    java_options = driver_java_options(spark)
    if java_options:
        conf["spark.driver.extraJavaOptions"] = java_options
    conf.update({f"spark.hadoop.{k}": v for k, v in s3a_conf(lakefs).items()})
    return conf


def spark_session(
    app_name: str,
    lakefs: LakeFSSettings,
    settings: SparkSettings,
    extra_conf: Mapping[str, str] | None = None,
) -> "SparkSession":
    """A SparkSession (local mode unless SPARK_MASTER says otherwise) with the
    Iceberg runtime, S3A on lakeFS, and Iceberg SQL extensions."""
    require_java(settings)
    # Deferred (PySpark): it loads with the Spark session.
    from pyspark.sql import SparkSession

    conf = {**base_conf(settings, lakefs, app_name), **(extra_conf or {})}
    _launch_jvm_without_secrets(settings.master, conf)
    builder = SparkSession.builder.master(settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    # Started from Python, PySpark has its workers (local or on a cluster's executors) run
    # $PYSPARK_PYTHON or a bare python3 on the PATH, which lacks pyarrow and the project (the
    # spark.pyspark.python conf only reaches spark-submit): name the interpreter explicitly.
    session.sparkContext.pythonExec = settings.python or sys.executable
    session.sparkContext.setLogLevel(settings.log_level)
    _quiet_known_noise(session)
    return session


def _launch_jvm_without_secrets(master: str, conf: Mapping[str, str]) -> None:
    """Start this process's Spark JVM (if none runs yet) with every setting but the secrets
    on its command line; the session built next passes the whole conf through Py4J. The JVM
    needs the others at launch (driver memory, jars)."""
    # Deferred (PySpark): it loads with the Spark session.
    from pyspark import SparkConf, SparkContext

    if SparkContext._gateway is not None:  # a JVM runs already (or spark-submit started this process)
        return
    launch = SparkConf().setMaster(master).setAll((k, v) for k, v in conf.items() if k not in SECRET_CONF_KEYS)
    SparkContext._ensure_initialized(conf=launch)  # pyspark's own launcher, given the conf to put on argv


# Loggers that warn about things that are expected here.
_NOISY_LOGGERS = (
    # We read CSVs with positional column names (raw names clash case-insensitively).
    "org.apache.spark.sql.catalyst.csv.CSVHeaderChecker",
    # A HadoopCatalog probes version-hint.text before the first commit of a table.
    "org.apache.iceberg.hadoop.HadoopTableOperations",
    "org.apache.hadoop.fs.s3a.S3AInstrumentation",
    "org.apache.hadoop.metrics2.impl.MetricsConfig",
    # Wide (~500 column) plans: truncated plan strings and large task binaries are expected.
    "org.apache.spark.sql.catalyst.util.SparkStringUtils",
    "org.apache.spark.scheduler.DAGScheduler",
)


def _quiet_known_noise(session: "SparkSession") -> None:
    jvm = session.sparkContext._jvm
    level = jvm.org.apache.logging.log4j.Level.ERROR
    for name in _NOISY_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)


def spark_error_line(exc: BaseException) -> str | None:
    """One line for a failure inside Spark (its JVM's root cause: class and message, without
    the Java stack), or None when ``exc`` did not come from Spark."""
    try:
        # Deferred (PySpark): it loads with the Spark session.
        from pyspark.errors import PySparkException
    except ImportError:  # pragma: no cover - no Spark here, so not Spark's failure
        return None
    if isinstance(exc, Py4JJavaError):
        try:
            cause = exc.java_exception
            while cause.getCause() is not None and cause.getCause() != cause:
                cause = cause.getCause()
            text = f"{cause.getClass().getName()}: {cause.getMessage()}"
        except Exception:  # noqa: BLE001 - the JVM is gone: its message's first line will do
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    elif isinstance(exc, PySparkException):
        text = str(exc)
    else:
        return None
    return " ".join(text.split())[:400]


def catalog_name(repo: str, ref: str) -> str:
    """A valid, unique Spark catalog identifier for one repo + ref."""
    digest = hashlib.sha1(f"{repo}\0{ref}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^0-9A-Za-z]", "_", f"{repo}_{ref}")[:40]
    return f"lakefs_{readable}_{digest}"


def warehouse_uri(repo: str, ref: str, prefix: str = "iceberg") -> str:
    return f"s3a://{repo}/{ref}/{prefix.strip('/')}"


def session_warehouse_prefix(session: "SparkSession") -> str:
    """The warehouse folder this session was built with (``SparkSettings.warehouse_prefix``)."""
    return session.conf.get(WAREHOUSE_PREFIX_CONF, SparkSettings.warehouse_prefix)


def register_ref_catalog(session: "SparkSession", repo: str, ref: str) -> str:
    """Register (idempotently) the Iceberg catalog of ``repo``@``ref``; returns its name.

    Reads work at any ref. Writes only work on branches: check with
    ``LakeFS.require_branch`` before writing (lakeFS rejects writes elsewhere).
    """
    name = catalog_name(repo, ref)
    prefix = f"spark.sql.catalog.{name}"
    session.conf.set(prefix, "org.apache.iceberg.spark.SparkCatalog")
    session.conf.set(f"{prefix}.type", "hadoop")
    session.conf.set(f"{prefix}.warehouse", warehouse_uri(repo, ref, session_warehouse_prefix(session)))
    return name
