"""Input discovery and checks that run before anything touches lakeFS."""

from __future__ import annotations

import csv
import zipfile

import pytest

from dfp_core.errors import InputDataError
from dfp_core.generator import generate
from dfp_spark import raw_inputs


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate(out, 80, seed=5)
    return out


def test_scan_reads_all_four_archives_and_marks_synthetic(archives):
    files, generator = raw_inputs.scan(archives)
    assert sorted(f.relative_path for _, f in files) == [
        "emulator/emu_legitimate_v1.zip", "emulator/emu_malware_v1.zip",
        "real_device/real_legitimate_v1.zip", "real_device/real_malware_v1.zip",
    ]
    assert generator["synthetic"] is True
    parts = {p.source_file: p for _, f in files for p in f.parts}
    assert parts["emu_malware_v1.zip"].expected_label == 1 and parts["real_legitimate_v1.zip"].expected_label == 0
    assert "FilesInsideAPK" not in parts["emu_malware_v1.zip"].columns
    assert parts["emu_malware_v1.zip"].lakefs_path == "raw/kronodroid/emulator/extracted/emu_malware_v1/emu_malware_v1.csv"
    assert all(len(f.sha256) == 64 for _, f in files)


def test_missing_required_columns_are_named(tmp_path, archives):
    src = archives / "real_device" / "real_legitimate_v1.zip"
    with zipfile.ZipFile(src) as zf:
        name = zf.namelist()[0]
        rows = list(csv.reader(zf.read(name).decode().splitlines(keepends=True)))
    drop = {rows[0].index("INTERNET"), rows[0].index("execve")}
    (tmp_path / "real_device").mkdir()
    with zipfile.ZipFile(tmp_path / "real_device" / "real_legitimate_v1.zip", "w") as zf:
        body = "\n".join(",".join(v for i, v in enumerate(r) if i not in drop) for r in rows[:1])
        zf.writestr(name, body + "\n")
    with pytest.raises(InputDataError, match=r"lacks 2 required column\(s\): execve, INTERNET"):
        raw_inputs.scan(tmp_path)


def test_empty_archive(tmp_path):
    (tmp_path / "emulator").mkdir()
    zipfile.ZipFile(tmp_path / "emulator" / "emu_malware_v1.zip", "w").close()
    with pytest.raises(InputDataError, match="archive emulator/emu_malware_v1.zip is empty"):
        raw_inputs.scan(tmp_path)


def test_member_that_is_not_csv(tmp_path):
    (tmp_path / "emulator").mkdir()
    with zipfile.ZipFile(tmp_path / "emulator" / "emu_malware_v1.zip", "w") as zf:
        zf.writestr("emu_malware_v1.xlsx", b"PK\x03\x04 not a csv")
    with pytest.raises(InputDataError, match="contains 'emu_malware_v1.xlsx', which is not a CSV"):
        raw_inputs.scan(tmp_path)


def test_corrupt_zip(tmp_path):
    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / "real_malware_v1.zip").write_bytes(b"garbage")
    with pytest.raises(InputDataError, match="is not a valid zip archive"):
        raw_inputs.scan(tmp_path)


def test_unknown_archive_name(tmp_path):
    (tmp_path / "kronodroid_all.zip").write_bytes(b"x")
    with pytest.raises(InputDataError, match="unknown input file kronodroid_all.zip"):
        raw_inputs.scan(tmp_path)


def test_empty_directory_and_missing_directory(tmp_path):
    with pytest.raises(InputDataError, match="no KronoDroid archives"):
        raw_inputs.scan(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        raw_inputs.scan(tmp_path / "nope")


def test_empty_csv(tmp_path):
    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / "kronodroid_real_device_2020_subset.csv").write_text("")
    with pytest.raises(InputDataError, match="is empty"):
        raw_inputs.scan(tmp_path)
