"""How a local Spark driver JVM compiles (DFP_SPARK_DRIVER_JIT): "auto" settled by a job's
input rows, the option it puts on the JVM's command line, and the rows a raw manifest gives.
A real JVM started with it: tests/integration/test_spark_class_archive_jvm.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dfp_core.errors import ConfigError
from dfp_core.kronodroid.raw_files import CsvPart, InputFile, RawManifest
from dfp_core.settings import QUICK_JIT_MAX_ROWS, SparkSettings
from dfp_core.spark_class_archive import QUICK_JIT_OPTION, driver_java_options

NO_ARCHIVE = SparkSettings(master="local[2]", class_archive_dir=None)


def test_the_setting_defaults_to_auto_and_names_the_variable_when_it_is_wrong():
    assert SparkSettings.from_env({}).driver_jit == "auto"
    assert SparkSettings.from_env({"DFP_SPARK_DRIVER_JIT": " Quick "}).driver_jit == "quick"
    assert SparkSettings.from_env({"DFP_SPARK_DRIVER_JIT": "full"}).driver_jit == "full"
    with pytest.raises(ConfigError, match="DFP_SPARK_DRIVER_JIT must be one of auto, quick, full, got 'c1'"):
        SparkSettings.from_env({"DFP_SPARK_DRIVER_JIT": "c1"})


def test_auto_is_quick_for_a_short_job_and_full_for_a_long_or_unknown_one():
    assert NO_ARCHIVE.for_input_rows(4000).driver_jit == "quick"
    assert NO_ARCHIVE.for_input_rows(QUICK_JIT_MAX_ROWS).driver_jit == "quick"
    assert NO_ARCHIVE.for_input_rows(QUICK_JIT_MAX_ROWS + 1).driver_jit == "full"
    assert NO_ARCHIVE.for_input_rows(None).driver_jit == "full"
    # A mode the user set is kept whatever the rows.
    assert replace(NO_ARCHIVE, driver_jit="full").for_input_rows(10).driver_jit == "full"
    assert replace(NO_ARCHIVE, driver_jit="quick").for_input_rows(10**9).driver_jit == "quick"


def test_only_a_quick_local_driver_gets_c1_only(tmp_path):
    assert driver_java_options(NO_ARCHIVE.for_input_rows(4000)) == QUICK_JIT_OPTION
    assert driver_java_options(NO_ARCHIVE.for_input_rows(None)) is None
    assert driver_java_options(NO_ARCHIVE) is None  # "auto" not settled: nothing is assumed
    # A driver this process does not start (a cluster's) is left as its master starts it.
    assert driver_java_options(replace(NO_ARCHIVE, master="spark://host:7077", driver_jit="quick")) is None


def test_quick_and_the_class_archive_go_on_one_command_line(tmp_path, monkeypatch):
    from dfp_core import spark_class_archive
    from dfp_spark.submit import spark_submit_command

    archive = tmp_path / "spark.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setattr(spark_class_archive, "archive_path", lambda settings: archive)
    settings = replace(NO_ARCHIVE, jars_provided=True).for_input_rows(100)
    options = driver_java_options(settings)
    assert options.split()[0] == f"-XX:SharedArchiveFile={archive}" and options.split()[-1] == QUICK_JIT_OPTION
    command = spark_submit_command(["--x"], settings)
    assert command[command.index("--driver-java-options") + 1] == options


def _part(rows: int | None) -> CsvPart:
    return CsvPart(lakefs_path="raw/a.zip", source_file="a.zip", member="a.csv", data_source="emulator", expected_label=0,
                   columns=["sha256"], data_rows=rows)


def test_a_manifest_gives_its_rows_only_when_every_part_was_measured():
    def manifest(*rows):
        return RawManifest(files=[InputFile("a.zip", "0" * 64, 1, "emulator", "raw/a.zip", [_part(r) for r in rows])],
                           synthetic=True)

    assert manifest(1000, 3000).data_rows == 4000
    assert manifest(1000, None).data_rows is None
    assert manifest().data_rows == 0


class _Objects:
    """lakeFS's objects as ``Runtime._spark_for`` reads them: bytes, or a lakeFS error."""

    def __init__(self, found: dict[tuple[str, str, str], bytes]):
        self.found = found

    def read_bytes(self, repo: str, ref: str, path: str) -> bytes:
        from dfp_core.errors import RefNotFoundError

        if (repo, ref, path) not in self.found:
            raise RefNotFoundError(f"read {path!r}: ref {ref!r} in repository {repo!r} not found in lakeFS")
        return self.found[(repo, ref, path)]


def test_a_retrieval_starts_spark_for_the_rows_its_transform_counted(monkeypatch):
    import json

    from dfp_core.kronodroid.schema import TRANSFORM_SUMMARY_PATH
    from dfp_core.runtime import Runtime
    from dfp_core.settings import Settings

    rt = Runtime(Settings.from_env({}))
    rt.__dict__["lakefs"] = _Objects({
        ("kronodroid", "main", TRANSFORM_SUMMARY_PATH): json.dumps({"fct_rows": 3988}).encode(),
        ("kronodroid", "broken", TRANSFORM_SUMMARY_PATH): b"not json",
    })
    asked = []
    monkeypatch.setattr(rt, "spark", lambda input_rows=None: asked.append(input_rows) or "session")
    assert rt._spark_for("kronodroid", "main") == "session"
    assert rt._spark_for("kronodroid", "broken") == "session"  # unreadable: rows not known
    assert rt._spark_for("kronodroid", "no-such-ref") == "session"  # the retrieval will say what is wrong
    assert asked == [3988, None, None]
    rt._spark = "started"  # a session started already is used as it is, nothing read
    rt.__dict__["lakefs"] = None
    assert rt._spark_for("kronodroid", "main") == "started"
