"""Input discovery and checks that run before anything touches lakeFS."""

from __future__ import annotations

import csv
import zipfile

import pytest

from dfp_core.errors import InputDataError
from dfp_core.kronodroid.generator import generate
from dfp_core.kronodroid import raw_files
from tests.inputs import archive_rows, csv_text, split_member


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate(out, 80, seed=5)
    return out


def test_scan_reads_all_four_archives_and_marks_synthetic(archives):
    scanned = raw_files.scan(archives)
    files, generator = scanned.files, scanned.generator
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
        raw_files.scan(tmp_path)


def test_empty_archive(tmp_path):
    (tmp_path / "emulator").mkdir()
    zipfile.ZipFile(tmp_path / "emulator" / "emu_malware_v1.zip", "w").close()
    with pytest.raises(InputDataError, match="archive emulator/emu_malware_v1.zip is empty"):
        raw_files.scan(tmp_path)


def test_member_that_is_not_csv(tmp_path):
    (tmp_path / "emulator").mkdir()
    with zipfile.ZipFile(tmp_path / "emulator" / "emu_malware_v1.zip", "w") as zf:
        zf.writestr("emu_malware_v1.xlsx", b"PK\x03\x04 not a csv")
    with pytest.raises(InputDataError, match="contains 'emu_malware_v1.xlsx', which is not a CSV"):
        raw_files.scan(tmp_path)


def test_corrupt_zip(tmp_path):
    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / "real_malware_v1.zip").write_bytes(b"garbage")
    with pytest.raises(InputDataError, match="is not a valid zip archive"):
        raw_files.scan(tmp_path)


def test_unknown_archive_name(tmp_path):
    (tmp_path / "kronodroid_all.zip").write_bytes(b"x")
    with pytest.raises(InputDataError, match="unknown input file kronodroid_all.zip"):
        raw_files.scan(tmp_path)


def test_empty_directory_and_missing_directory(tmp_path):
    with pytest.raises(InputDataError, match="no KronoDroid archives"):
        raw_files.scan(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        raw_files.scan(tmp_path / "nope")


def test_empty_csv(tmp_path):
    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / "kronodroid_real_device_2020_subset.csv").write_text("")
    with pytest.raises(InputDataError, match="is empty"):
        raw_files.scan(tmp_path)


def test_members_are_identified_by_their_full_path(archives, tmp_path):
    folder, total = split_member(archives, tmp_path / "in", first=7)
    files = raw_files.scan(folder, measure_parts=True).files
    [(_, entry)] = files
    assert [p.member for p in entry.parts] == ["a/real_malware_v1.csv", "b/real_malware_v1.csv"]
    assert [p.lakefs_path for p in entry.parts] == [
        "raw/kronodroid/real_device/extracted/real_malware_v1/a/real_malware_v1.csv",
        "raw/kronodroid/real_device/extracted/real_malware_v1/b/real_malware_v1.csv",
    ]
    assert [p.data_rows for p in entry.parts] == [7, total - 7]
    assert all(p.size_bytes and len(p.sha256) == 64 and len(p.md5) == 32 for p in entry.parts)
    assert entry.parts[0].sha256 != entry.parts[1].sha256


def test_measure_counts_records_not_lines(tmp_path):
    """Quoted fields with newlines (every Package value of the real subset) are one row."""
    generate(tmp_path, 30, seed=2, layout="subset")
    [csv_path] = list(tmp_path.rglob("*.csv"))
    text = csv_path.read_text()
    with open(csv_path, newline="") as handle:
        records = sum(1 for row in csv.reader(handle) if row) - 1
    assert records == 30 and text.count("\n") > records + 1  # more lines than records
    files = raw_files.scan(tmp_path, measure_parts=True).files
    [(_, entry)] = files
    assert entry.parts[0].data_rows == 30 and entry.parts[0].size_bytes == csv_path.stat().st_size


def test_header_only_csv_is_an_error(archives, tmp_path):
    src = archives / "emulator" / "emu_legitimate_v1.zip"
    with zipfile.ZipFile(src) as zf:
        header = zf.read(zf.namelist()[0]).decode().split("\n", 1)[0]
    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / "real_extra.csv").write_text(header + "\n\n")
    raw_files.scan(tmp_path)  # the header alone is a valid header
    with pytest.raises(InputDataError, match=r"real_device/real_extra.csv has a header but no data rows"):
        raw_files.scan(tmp_path, measure_parts=True)


@pytest.mark.parametrize("member", ["../real_malware_v1.csv", "/etc/real_malware_v1.csv", "a\\..\\x.csv"])
def test_unsafe_member_paths_are_refused(tmp_path, member):
    (tmp_path / "real_device").mkdir()
    with zipfile.ZipFile(tmp_path / "real_device" / "real_malware_v1.zip", "w") as zf:
        zf.writestr(member, "sha256,Malware\n")
    with pytest.raises(InputDataError, match="unsafe path"):
        raw_files.scan(tmp_path)


def test_symlinks_leading_outside_the_input_are_refused(archives, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "in" / "emulator").mkdir(parents=True)
    target = outside / "emu_malware_v1.zip"
    target.write_bytes((archives / "emulator" / "emu_malware_v1.zip").read_bytes())
    (tmp_path / "in" / "emulator" / "emu_malware_v1.zip").symlink_to(target)
    with pytest.raises(InputDataError, match=r"emulator/emu_malware_v1.zip is a link to .*outside the input folder"):
        raw_files.scan(tmp_path / "in")
    # A link that stays inside the folder is just another name for an input file.
    inside = tmp_path / "in2" / "emulator"
    inside.mkdir(parents=True)
    (inside / "emu_legitimate_v1.zip").write_bytes((archives / "emulator" / "emu_legitimate_v1.zip").read_bytes())
    (inside / "emu_malware_v1.zip").symlink_to(inside / "emu_legitimate_v1.zip")
    assert [p.name for p, _ in raw_files.discover(inside.parent)] == ["emu_legitimate_v1.zip", "emu_malware_v1.zip"]


def test_reconciliation_compares_rows_given_and_read_per_part():
    from dfp_spark.transform_run import reconcile

    def part(member, rows):
        return raw_files.CsvPart(f"raw/{member}", "real_malware_v1.zip", member, "real_device", 1, [], data_rows=rows)

    manifest = raw_files.RawManifest(files=[raw_files.InputFile(
        "real_device/real_malware_v1.zip", "0" * 64, 1, "real_device", "raw/x.zip",
        parts=[part("a/real_malware_v1.csv", 50), part("b/real_malware_v1.csv", 56)],
    )], synthetic=False)
    a, b = "real_malware_v1.zip:a/real_malware_v1.csv", "real_malware_v1.zip:b/real_malware_v1.csv"
    good = {"rows_by_part": {a: 50, b: 56}, "input_rows": 106, "fct_rows": 100, "quarantined_rows": 4, "duplicates_dropped": 2}
    assert reconcile(manifest, good) == {"rows_given": 106, "reconciled": True, "reconciliation_error": None}

    # The defect this guards against: b/ stored over a/, so both parts read b/'s 56 rows
    # and 56 rows look like duplicates. The totals add up; the parts do not.
    overwritten = {"rows_by_part": {a: 56, b: 56}, "input_rows": 112, "fct_rows": 56, "quarantined_rows": 0, "duplicates_dropped": 56}
    result = reconcile(manifest, overwritten)
    assert not result["reconciled"]
    assert result["reconciliation_error"] == f"{a}: 50 rows given, 56 read"

    lost = {"rows_by_part": {b: 56}, "input_rows": 56, "fct_rows": 50, "quarantined_rows": 0, "duplicates_dropped": 0}
    assert reconcile(manifest, lost)["reconciliation_error"] == f"{a}: 50 rows given, 0 read; 56 rows read, 50 accounted for"


def test_a_cell_beyond_the_limit_is_named(archives, tmp_path):
    from dfp_core.kronodroid.raw_files import MAX_CELL_CHARS

    name, rows = archive_rows(archives / "real_device" / "real_malware_v1.zip")
    rows[1][-1] = "x" * (MAX_CELL_CHARS + 1)
    folder = tmp_path / "in" / "real_device"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "real_malware_v1.zip", "w", zipfile.ZIP_STORED) as zf:  # no bomb, one huge cell
        zf.writestr(name, csv_text(rows))
    with pytest.raises(InputDataError, match=f"has a cell over {MAX_CELL_CHARS >> 20} MiB"):
        raw_files.scan(folder.parent, measure_parts=True)


def test_the_scorers_reader_reads_a_row_with_the_largest_cell_allowed(archives, tmp_path):
    """The scorer's reader parses in blocks (reader.BLOCK_SIZE) and needs each row inside one:
    a row holding a cell of MAX_CELL_CHARS is read, between ordinary rows."""
    from dfp_core.kronodroid.raw_files import MAX_CELL_CHARS
    from dfp_core.kronodroid.reader import BLOCK_SIZE, read_kronodroid

    name, rows = archive_rows(archives / "real_device" / "real_malware_v1.zip")
    rows[2][rows[0].index("Package")] = "p" * MAX_CELL_CHARS
    rows = [rows[0]] + rows[1:] * (BLOCK_SIZE // (MAX_CELL_CHARS // 2))  # the big row in several blocks
    folder = tmp_path / "in" / "real_device"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "real_malware_v1.zip", "w", zipfile.ZIP_STORED) as zf:  # the p's deflate past the bomb ratio
        zf.writestr(name, csv_text(rows))
    valid, rejected = read_kronodroid(folder.parent)
    assert len(valid) + len(rejected) == len(rows) - 1 and rejected.empty
    assert (valid["package_name"].str.len() == MAX_CELL_CHARS).sum() == BLOCK_SIZE // (MAX_CELL_CHARS // 2)


def test_an_archive_that_expands_too_far_is_refused_before_expanding(archives, tmp_path):
    name, rows = archive_rows(archives / "real_device" / "real_malware_v1.zip")
    folder = tmp_path / "in" / "real_device"
    folder.mkdir(parents=True)
    # a valid KronoDroid CSV padded with one highly compressible cell: 5 MB from a few KB
    rows[1][rows[0].index("Package")] = "a" * 5_000_000
    with zipfile.ZipFile(folder / "real_malware_v1.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, csv_text(rows))
    with pytest.raises(InputDataError, match=r"would expand \d+x .* over the 100x limit"):
        raw_files.scan(folder.parent)


def test_a_member_over_the_size_limit_is_refused(archives, tmp_path, monkeypatch):
    monkeypatch.setattr(raw_files, "MAX_MEMBER_BYTES", 4096)
    with pytest.raises(InputDataError, match=r"would expand to [\d,]+ bytes, over the limit of 4,096 bytes per member"):
        raw_files.scan(archives)
