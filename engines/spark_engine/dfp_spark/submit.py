"""``spark-submit`` of the transform job in local mode, the way the Spark
Operator runs it on a cluster: the job file, its arguments, this Spark's jars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from dfp_core.errors import DfpError
from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_core.spark_class_archive import driver_java_options
from dfp_core.spark_jars import jar_paths

JOB_FILE = Path(__file__).resolve().with_name("kronodroid_iceberg_job.py")


class SparkJobError(DfpError):
    """The Spark job exited with an error."""


def spark_submit_command(job_args: list[str], settings: SparkSettings) -> list[str]:
    # Deferred (PySpark): only to find spark-submit.
    import pyspark

    # pip's pyspark is a Spark distribution: bin/spark-submit, jars/ (the images use it as SPARK_HOME).
    command = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", settings.master,
               "--driver-memory", settings.driver_memory,
               "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}"]
    if not settings.jars_provided:
        command += ["--jars", ",".join(str(p) for p in jar_paths(settings.jars_dir))]
    # spark-submit starts the driver's JVM here, before the job's session asks for anything.
    java_options = driver_java_options(settings)
    if java_options:
        command += ["--driver-java-options", java_options]
    return [*command, str(JOB_FILE), *job_args]


def run_local(job_args: list[str], settings: SparkSettings, lakefs: LakeFSSettings, env: Mapping[str, str]) -> dict:
    """Run the job to the end; returns its JSON summary (its last stdout line).
    Its progress goes to stderr as it runs.

    The job builds its runtime from its environment, as on a cluster (where the
    SparkApplication sets it): ``env`` with ``lakefs`` over it, so the job talks to
    the lakeFS its caller was given, however the caller got it (a pipeline
    parameter, stack.env)."""
    child_env = {**env, **lakefs.to_env()}
    # spark-submit's PythonRunner merges the job's stderr (progress, the error line) into
    # its stdout: pass every line on to our stderr as it comes, keep the last for the summary.
    last = ""
    with subprocess.Popen(spark_submit_command(job_args, settings), stdout=subprocess.PIPE, text=True,
                          env=child_env) as job:
        for line in job.stdout:
            sys.stderr.write(line)
            if line.strip():
                last = line.strip()
    if job.returncode != 0:
        raise SparkJobError(f"the Spark job exited with code {job.returncode} (its error is above)")
    try:
        return json.loads(last)
    except ValueError:
        raise SparkJobError(f"the Spark job printed no JSON summary (last line: {last!r})") from None
