"""Row typing and rejection reasons, on Arrow batches (no Spark needed)."""

from __future__ import annotations

import json
from datetime import date

import pyarrow as pa
import pytest

from dfp_core.kronodroid import schema
from dfp_core.kronodroid.arrow_typing import CORRUPT_RECORD, make_typer, output_fields, raw_column


def _columns(date_pair=("EarliestModDate", "HighestModDate"), extra=()):
    return [
        schema.PACKAGE, schema.LABEL, *schema.SYSCALLS, "nr_syscalls", *schema.PERMISSIONS,
        *schema.STATIC_AGGREGATES, schema.SHA256, *schema.APK_METADATA, *date_pair,
        "Scanners", "Detection_Ratio", schema.FAMILY, *extra,
    ]


def _row(columns, **overrides):
    values = {c: "0" for c in columns}
    values.update({
        schema.PACKAGE: "com.example.app\n", schema.LABEL: "1", schema.SHA256: "A" * 64,
        "EarliestModDate": "2015-03-04 10:00:00", "HighestModDate": "2016-05-06 11:12:13",
        "FirstModDate": "2015-03-04 10:00:00", "LastModDate": "2016-05-06 11:12:13", "Highest-date": "2019-01-02",
        "Scanners": "60", "Detection_Ratio": "0.25", schema.FAMILY: "Airpush", "read": "1234",
    })
    values.update(overrides)
    return [values.get(c) for c in columns]


def _type(columns, rows, expected_label=1, source="real_device"):
    arrays = [pa.array(["f.zip"] * len(rows)), pa.array(["f.csv"] * len(rows)),
              pa.array(list(range(1, len(rows) + 1)), pa.int64()), pa.array(["run"] * len(rows))]
    names = ["source_file", "source_member", "source_row", "run_id"]
    for i, _ in enumerate(columns):
        arrays.append(pa.array([r[i] for r in rows], pa.string()))
        names.append(raw_column(i))
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    out = list(make_typer(columns, source, expected_label)([batch]))
    assert len(out) == 1
    return out[0].to_pylist()


def test_clean_row_is_typed_with_canonical_names():
    cols = _columns()
    [row] = _type(cols, [_row(cols)])
    assert row["reasons"] == [] and row["detail"] is None and row["raw_record"] is None
    assert row["label"] == 1 and row["sc_read"] == 1234 and row["perm_reboot"] == 0 and row["sc_reboot"] == 0
    assert row["sha256"] == "a" * 64
    assert row["package_name"] == "com.example.app"  # embedded newline stripped
    assert row["earliest_mod_date"] == date(2015, 3, 4) and row["latest_mod_date"] == date(2016, 5, 6)
    assert row["scanners"] == 60 and row["detection_ratio"] == 0.25
    assert set(schema.FEATURE_COLUMNS) <= set(row)


def test_emulator_date_columns_unify_and_sentinel_becomes_null():
    cols = _columns(("FirstModDate", "LastModDate"))
    [row] = _type(cols, [_row(cols, FirstModDate="1980-01-01 00:00:00")], source="emulator")
    assert row["reasons"] == []
    assert row["earliest_mod_date"] is None and row["latest_mod_date"] == date(2016, 5, 6)


def test_integral_decimals_are_accepted():
    cols = _columns()
    [row] = _type(cols, [_row(cols, read="12.0")])
    assert row["reasons"] == [] and row["sc_read"] == 12


@pytest.mark.parametrize(
    "overrides, reason, detail",
    [
        ({"read": "abc"}, "non_numeric_feature", "non-numeric: sc_read"),
        ({"read": "1.5"}, "non_numeric_feature", "non-numeric: sc_read"),
        ({"write": "-3"}, "negative_count", "negative: sc_write"),
        ({"INTERNET": None}, "missing_feature_value", "empty: perm_internet"),
        ({"HighestModDate": "yesterday"}, "unparsable_date", "bad date: HighestModDate"),
        ({schema.LABEL: "2"}, "invalid_label", "label: 2"),
        ({schema.LABEL: "0"}, "label_archive_mismatch", None),
        ({schema.SHA256: "not-a-hash"}, "invalid_sha256", None),
    ],
)
def test_bad_cells_are_rejected_with_reason_and_detail(overrides, reason, detail):
    cols = _columns()
    good, bad = _type(cols, [_row(cols), _row(cols, **overrides)])
    assert good["reasons"] == []
    assert reason in bad["reasons"]
    if detail:
        assert detail in bad["detail"]
    record = json.loads(bad["raw_record"])
    assert set(record) == set(cols)  # the raw row, under its original column names


def test_several_problems_are_all_reported():
    cols = _columns()
    [row] = _type(cols, [_row(cols, read="x", write="-1", INTERNET=None)])
    assert row["reasons"][:3] == ["missing_feature_value", "non_numeric_feature", "negative_count"]


def test_missing_optional_feature_is_null_not_rejected():
    cols = [c for c in _columns() if c != "FilesInsideAPK"]
    [row] = _type(cols, [_row(cols)])
    assert row["reasons"] == [] and row["files_inside_apk"] is None


def test_unknown_columns_are_kept_as_extras():
    cols = _columns(extra=("VendorScore",))
    [row] = _type(cols, [_row(cols, VendorScore="7")])
    assert row["extra_vendor_score"] == "7"
    assert ("extra_vendor_score", pa.string()) in output_fields(cols)


def test_mixed_label_subset_has_no_expected_label():
    cols = _columns(("Highest-date",))
    rows = [_row(cols, **{schema.LABEL: "0", "Highest-date": "2019-11-11"}), _row(cols)]
    benign, malware = _type(cols, rows, expected_label=None)
    assert benign["reasons"] == [] and malware["reasons"] == []
    assert benign["latest_mod_date"] == date(2019, 11, 11)


def test_a_count_too_large_for_int64_is_out_of_range_not_negative():
    cols = _columns()
    good, huge, long_decimal = _type(cols, [_row(cols, read="123456789012345678"), _row(cols, read="9" * 1_000_000),
                                            _row(cols, write="1" * 19 + ".0")])
    assert good["reasons"] == [] and good["sc_read"] == 123456789012345678  # exact: no float round trip
    assert huge["reasons"] == ["count_out_of_range"] and huge["sc_read"] is None
    assert "out of range: sc_read" in huge["detail"]
    assert long_decimal["reasons"] == ["count_out_of_range"] and "sc_write" in long_decimal["detail"]


def test_text_that_was_not_utf8_is_rejected():
    cols = _columns()
    clean, replaced = _type(cols, [_row(cols), _row(cols, **{schema.FAMILY: "Air\ufffdpush"})])
    assert clean["reasons"] == []
    assert replaced["reasons"] == ["invalid_utf8"] and schema.FAMILY in replaced["detail"]


def test_a_row_spark_could_not_split_is_malformed():
    cols = _columns()
    rows = [_row(cols), _row(cols)]
    arrays = [pa.array(["f.zip"] * 2), pa.array(["f.csv"] * 2), pa.array([1, 2], pa.int64()), pa.array(["run"] * 2)]
    names = ["source_file", "source_member", "source_row", "run_id"]
    for i, _ in enumerate(cols):
        arrays.append(pa.array([r[i] for r in rows], pa.string()))
        names.append(raw_column(i))
    arrays.append(pa.array([None, "a,b,c,...,extra"], pa.string()))
    names.append(CORRUPT_RECORD)
    good, bad = list(make_typer(cols, "real_device", 1)([pa.RecordBatch.from_arrays(arrays, names=names)]))[0].to_pylist()
    assert good["reasons"] == []
    assert bad["reasons"][0] == "malformed_row" and bad["raw_record"] == "a,b,c,...,extra"


def test_the_count_bound_is_the_same_on_the_fast_path():
    cols = _columns()
    # every cell of the column casts cleanly, so the batch takes the one-cast path
    small, big = _type(cols, [_row(cols, read="5"), _row(cols, read=str(10**18))])
    assert small["reasons"] == [] and big["reasons"] == ["count_out_of_range"] and big["sc_read"] is None
