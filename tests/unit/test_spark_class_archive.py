"""Which class archive a local Spark driver maps, and when none (no JVM started here; the
archive's build and its use by a real JVM are in tests/integration/test_spark_class_archive_jvm.py)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_core.spark import base_conf
from dfp_core.spark_class_archive import archive_path, driver_java_options

LAKEFS = LakeFSSettings(access_key_id="k", secret_access_key="s")


@pytest.fixture
def settings(tmp_path):
    if shutil.which("java") is None:
        pytest.skip("no java on the PATH")
    env = {"DFP_CACHE_DIR": str(tmp_path / "cache"), "SPARK_MASTER": "local[2]"}
    spark = SparkSettings.from_env(env)
    # base_conf lists the locked jars: point at the machine's cache of them (only paths are used).
    return replace(spark, jars_dir=SparkSettings.from_env(os.environ).jars_dir)


def test_the_archive_setting_is_on_by_default_and_can_be_moved_or_turned_off(tmp_path):
    assert SparkSettings.from_env({"DFP_CACHE_DIR": str(tmp_path)}).class_archive_dir == tmp_path.resolve() / "spark-cds"
    assert SparkSettings.from_env({"DFP_SPARK_CLASS_ARCHIVE": str(tmp_path / "cds")}).class_archive_dir == tmp_path / "cds"
    for off in ("0", "off", "OFF", "false"):
        assert SparkSettings.from_env({"DFP_SPARK_CLASS_ARCHIVE": off}).class_archive_dir is None


def test_a_local_session_maps_the_archive_once_it_is_built(settings):
    path = archive_path(settings)
    assert path.parent == settings.class_archive_dir and path.suffix == ".jsa"
    assert driver_java_options(settings) is None
    assert "spark.driver.extraJavaOptions" not in base_conf(settings, LAKEFS, "t")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"archive")
    options = driver_java_options(settings)
    assert options.split()[0] == f"-XX:SharedArchiveFile={path}" and "-Xshare:auto" in options.split()
    assert base_conf(settings, LAKEFS, "t")["spark.driver.extraJavaOptions"] == options


def test_spark_submit_starts_the_driver_with_the_archive(settings):
    from dfp_spark.submit import spark_submit_command

    assert "--driver-java-options" not in spark_submit_command(["--x"], settings)
    path = archive_path(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"archive")
    command = spark_submit_command(["--x"], settings)
    assert command[command.index("--driver-java-options") + 1] == driver_java_options(settings)
    assert command[-1] == "--x"  # the job's own arguments stay last


def test_no_archive_where_the_driver_is_not_ours_to_start_or_it_is_off(settings):
    assert archive_path(replace(settings, master="spark://host:7077")) is None
    assert archive_path(replace(settings, master="k8s://https://api:6443")) is None
    assert archive_path(replace(settings, jars_provided=True)) is None  # an image's Spark
    assert archive_path(replace(settings, class_archive_dir=None)) is None


def test_another_jdk_or_jar_set_gets_an_archive_of_its_own(settings, tmp_path):
    java = Path(shutil.which("java")).resolve()
    other_home = tmp_path / "jdk"
    (other_home / "bin").mkdir(parents=True)
    shutil.copy(java, other_home / "bin" / "java")  # the same JVM launcher, another install
    assert archive_path(replace(settings, java_home=str(other_home))) != archive_path(settings)
    assert archive_path(replace(settings, jars_dir=tmp_path / "other-jars")) != archive_path(settings)
    assert archive_path(settings) == archive_path(replace(settings))  # and the key is stable
