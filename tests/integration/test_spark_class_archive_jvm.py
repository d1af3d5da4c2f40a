"""The class archive `make setup` builds (dfp_core.spark_class_archive), mapped by a real local
Spark driver JVM that then runs a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dfp_core.settings import SparkSettings
from dfp_core.spark_class_archive import QUICK_JIT_OPTION, _try_in_a_new_jvm, archive_path
from dfp_spark.submit import JOB_FILE, spark_submit_command

# What the driver JVM has mapped (its .jsa files), then a job: the tail of both scripts below.
REPORT = """
pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
with open(f"/proc/{pid}/maps") as maps:
    mapped = sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".jsa")})
jvm_args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
print(json.dumps({"mapped": mapped, "rows": spark.range(7).count(), "jvm_args": jvm_args}))
"""
# A new process: this one may hold a Spark JVM already (the archive is mapped at a JVM's start).
SESSION = """
import json, os
from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_core.spark import spark_session
spark = spark_session("class-archive-test", LakeFSSettings(access_key_id="k", secret_access_key="s"),
                      SparkSettings.from_env(os.environ))
""" + REPORT
# The transform's path: spark-submit starts the driver JVM, then runs the job file in it.
SUBMITTED_JOB = """
import json
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
""" + REPORT


def _session(env: dict, command: list[str] | None = None) -> dict:
    command = command or [sys.executable, "-c", SESSION]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_local_session_maps_the_archive_and_runs(tmp_path):
    env = {**os.environ, "SPARK_MASTER": "local[2]"}
    path = archive_path(SparkSettings.from_env(env))
    assert path is not None, "a local session with the default settings uses an archive"
    if not path.is_file():  # `make setup` builds it; a bare checkout builds it here
        built = subprocess.run([sys.executable, "-m", "dfp_core.spark_class_archive"], env=env,
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0 and "warning" not in built.stderr, built.stderr[-3000:]
    assert path.is_file() and path.stat().st_size > 50 << 20
    seen = _session(env)
    assert seen["rows"] == 7 and str(path) in seen["mapped"], seen
    job = tmp_path / "job.py"
    job.write_text(SUBMITTED_JOB)
    command = spark_submit_command(["--unused"], SparkSettings.from_env(env))
    assert command[-2] == str(JOB_FILE)
    seen = _session(env, [*command[:-2], str(job)])  # the transform's job file swapped for ours
    assert seen["rows"] == 7 and str(path) in seen["mapped"], seen
    # Turned off, the same session maps no archive of ours and runs as before.
    seen = _session({**env, "DFP_SPARK_CLASS_ARCHIVE": "off"})
    assert seen["rows"] == 7 and not any(m.startswith(str(path.parent)) for m in seen["mapped"]), seen


def test_a_driver_jvm_for_a_short_job_compiles_with_c1_only_and_still_maps_the_archive(tmp_path):
    """DFP_SPARK_DRIVER_JIT=quick (what "auto" settles to for a job of few input rows) reaches
    the JVM both ways a local driver starts: a session started from Python, and spark-submit."""
    env = {**os.environ, "SPARK_MASTER": "local[2]"}
    path = archive_path(SparkSettings.from_env(env))
    seen = _session(env)  # "auto", no rows given: the JVM's own compilers
    assert seen["rows"] == 7 and QUICK_JIT_OPTION not in seen["jvm_args"], seen
    quick = {**env, "DFP_SPARK_DRIVER_JIT": "quick"}
    seen = _session(quick)
    assert seen["rows"] == 7 and QUICK_JIT_OPTION in seen["jvm_args"], seen
    job = tmp_path / "job.py"
    job.write_text(SUBMITTED_JOB)
    settings = SparkSettings.from_env(env).for_input_rows(4000)
    assert settings.driver_jit == "quick"
    command = spark_submit_command(["--unused"], settings)
    seen = _session(env, [*command[:-2], str(job)])
    assert seen["rows"] == 7 and QUICK_JIT_OPTION in seen["jvm_args"], seen
    if path is not None and path.is_file():  # built by the test above or `make setup`
        assert str(path) in seen["mapped"], seen


def test_a_truncated_archive_is_caught_before_it_is_put_in_place(tmp_path):
    """A JVM given a truncated archive dies at start (SIGBUS): the build's check sees that, so
    such a file never reaches the archive's place, where every Spark command would map it."""
    env = {**os.environ, "SPARK_MASTER": "local[2]"}
    path = archive_path(SparkSettings.from_env(env))
    if path is None or not path.is_file():
        built = subprocess.run([sys.executable, "-m", "dfp_core.spark_class_archive"], env=env,
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0 and path.is_file(), built.stderr[-3000:]
    truncated = tmp_path / "truncated.jsa"
    with open(path, "rb") as whole:
        truncated.write_bytes(whole.read(1 << 20))
    assert _try_in_a_new_jvm(path) is None
    problem = _try_in_a_new_jvm(truncated)
    assert problem and problem.startswith("exit "), problem
