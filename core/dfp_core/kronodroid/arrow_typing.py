"""Typing of raw KronoDroid rows, vectorised with pyarrow inside Spark
(``DataFrame.mapInArrow``): string cells -> typed canonical columns, plus the
reasons a row is rejected.

Why not Spark SQL expressions: with ~480 columns the generated projections are
huge, and per-column checks (null, numeric, negative) cost ~3x the parsing
itself. Arrow compute does each check as one pass over a column.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfp_core.kronodroid import schema

INT_PATTERN = r"^-?[0-9]+(\.0+)?$"
# Up to 18 digits always fits an int64; a longer count is out of range, not a negative
# one (a float64 round trip turns it into INT64_MIN).
IN_RANGE_PATTERN = r"^-?[0-9]{1,18}$"
COUNT_LIMIT = 10**18
# Spark's CSV reader puts a row whose cell count differs from the header here (PERMISSIVE
# mode); pyarrow's reader reports such rows through its invalid-row handler instead.
CORRUPT_RECORD = "_corrupt_record"
# What a UTF-8 decoder puts where the bytes were not UTF-8 (both readers replace them).
REPLACEMENT_CHAR = "\ufffd"
SHA256_PATTERN = r"^[0-9A-Fa-f]{64}$"
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%Y/%m/%d")
LABEL_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
PROVENANCE = ("source_file", "source_member", "source_row", "run_id")


def extra_column_name(raw: str) -> str:
    return "extra_" + schema._snake(raw)


def raw_column(index: int) -> str:
    # Raw names are not usable as Spark columns: Spark is case-insensitive and
    # KronoDroid has both syscall ``reboot`` and permission ``REBOOT``.
    return f"_c{index}"


def output_fields(columns: list[str]) -> list[tuple[str, pa.DataType]]:
    """Typed output columns for a part with these raw columns (order fixed)."""
    known_extras = [c for c in schema.KNOWN_EXTRAS if c in columns]
    unknown = [c for c in columns if c not in schema.KNOWN_RAW]
    return [
        *[(c, pa.string() if c != "source_row" else pa.int64()) for c in PROVENANCE],
        ("data_source", pa.string()),
        ("sha256", pa.string()),
        ("label", pa.int32()),
        ("malware_family", pa.string()),
        ("package_name", pa.string()),
        *[(name, pa.int64()) for name in schema.FEATURE_COLUMNS],
        ("scanners", pa.int64()),
        ("detection_ratio", pa.float64()),
        ("earliest_mod_date", pa.date32()),
        ("latest_mod_date", pa.date32()),
        *[(schema.canonical_name(c), pa.string()) for c in known_extras],
        *[(extra_column_name(c), pa.string()) for c in unknown],
        ("reasons", pa.list_(pa.string())),
        ("detail", pa.string()),
        ("raw_record", pa.string()),
    ]


def _text(array: pa.Array) -> pa.Array:
    """Trimmed strings, empty -> null (quoted values keep their whitespace in the CSV)."""
    trimmed = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _feature(array: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """(integer values, the cells they came from, mask of integers too large for a count
    or None). Non-integers become null; "12.0" is accepted as 12. Fast path: one cast
    when the column is clean (Spark's CSV reader already trimmed unquoted cells and
    nulled empty ones)."""
    try:
        value = pc.cast(array, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    else:  # the same bound as the pattern below, whichever path a batch takes
        if value.null_count == 0:  # numpy reads the values in place: one comparison, no Arrow calls
            too_large = value.to_numpy() >= COUNT_LIMIT
            if not too_large.any():
                return value, array, None
            too_large = pa.array(too_large)
        else:
            too_large = pc.greater_equal(value, COUNT_LIMIT)
            if not pc.any(too_large).as_py():
                return value, array, None
        return pc.if_else(too_large, pa.scalar(None, pa.int64()), value), array, too_large
    text = _text(array)
    integral = pc.replace_substring_regex(
        pc.if_else(pc.match_substring_regex(text, INT_PATTERN), text, pa.scalar(None, pa.string())),
        pattern=r"\.0+$", replacement="")
    in_range = pc.match_substring_regex(integral, IN_RANGE_PATTERN)
    value = pc.cast(pc.if_else(in_range, integral, pa.scalar(None, pa.string())), pa.int64())
    return value, text, pc.and_(pc.is_valid(integral), pc.invert(in_range))


def _as_long(array: pa.Array) -> pa.Array:
    return _feature(array)[0]


def _as_double(array: pa.Array) -> pa.Array:
    array = _text(array)
    try:
        return pc.cast(array, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(array, r"^-?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$")
        return pc.cast(pc.if_else(ok, array, pa.scalar(None, pa.string())), pa.float64())


def _as_date(array: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(date or null, mask of non-empty cells that do not parse). 1980-01-01 -> null."""
    text = _text(array)
    parsed = None
    for fmt in DATE_FORMATS:
        attempt = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        parsed = attempt if parsed is None else pc.coalesce(parsed, attempt)
    dates = pc.cast(parsed, pa.date32())
    unparsable = pc.and_(pc.is_valid(text), pc.is_null(dates))
    sentinel = pa.scalar(date.fromisoformat(schema.SENTINEL_DATE), pa.date32())
    dates = pc.if_else(pc.equal(dates, sentinel), pa.scalar(None, pa.date32()), dates)
    return dates, unparsable


def _mask(array: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def make_typer(columns: list[str], data_source: str, expected_label: int | None
               ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs for one CSV part."""
    pos = {c: raw_column(i) for i, c in enumerate(columns)}
    present = [c for c in schema.RAW_FEATURES if c in pos]
    fields = output_fields(columns)
    out_schema = pa.schema(fields)
    known_extras = [c for c in schema.KNOWN_EXTRAS if c in pos]
    unknown = [c for c in columns if c not in schema.KNOWN_RAW]
    text_columns = [c for c in columns if c not in schema.RAW_FEATURES]

    def typed_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        raw = {c: col[pos[c]] for c in pos}
        features = {}
        # Masks are (column, row): each column's mask is one contiguous row to fill. A clean
        # column (the common case) costs its cast and one numpy comparison; the Arrow
        # passes for nulls and non-numbers run only where the null counts say they matter.
        missing = np.zeros((len(present), n), dtype=bool)
        non_numeric = np.zeros_like(missing)
        negative = np.zeros_like(missing)
        too_large = np.zeros_like(missing)
        for j, c in enumerate(present):
            value, cell, out_of_range = _feature(raw[c])
            features[schema.canonical_name(c)] = value
            if cell.null_count:
                missing[j] = _mask(pc.is_null(cell))
            if out_of_range is not None:
                too_large[j] = _mask(out_of_range)
            if value.null_count > cell.null_count:  # a cell that is there but is no count
                non_numeric[j] = _mask(pc.and_(pc.is_valid(cell), pc.is_null(value))) & ~too_large[j]
            if value.null_count:
                negative[j] = _mask(pc.less(value, 0))
            else:
                negative[j] = value.to_numpy() < 0
        # Text cells only: a replaced byte in a count cell already makes it non-numeric.
        not_utf8 = np.zeros((len(text_columns), n), dtype=bool)
        for j, c in enumerate(text_columns):
            not_utf8[j] = _mask(pc.match_substring(raw[c], REPLACEMENT_CHAR))
        corrupt = col.get(CORRUPT_RECORD)
        malformed = _mask(pc.is_valid(corrupt)) if corrupt is not None else np.zeros(n, dtype=bool)
        label_text = _text(raw[schema.LABEL])
        label = pa.array([LABEL_VALUES.get(v) for v in label_text.to_pylist()], pa.int32())
        sha_text = _text(raw[schema.SHA256])
        sha_ok = _mask(pc.match_substring_regex(sha_text, SHA256_PATTERN))
        dates = {"earliest_mod_date": pa.nulls(n, pa.date32()), "latest_mod_date": pa.nulls(n, pa.date32())}
        bad_dates = np.zeros((len(schema.DATE_COLUMNS), n), dtype=bool)
        for j, (raw_name, canon) in enumerate(schema.DATE_COLUMNS.items()):
            if raw_name in raw:
                dates[canon], unparsable = _as_date(raw[raw_name])
                bad_dates[j] = _mask(unparsable)

        label_np = np.asarray(label.to_numpy(zero_copy_only=False), dtype=float)
        flags = {
            "malformed_row": malformed,
            "missing_feature_value": missing.any(axis=0),
            "non_numeric_feature": non_numeric.any(axis=0),
            "negative_count": negative.any(axis=0),
            "count_out_of_range": too_large.any(axis=0),
            "invalid_utf8": not_utf8.any(axis=0),
            "invalid_label": np.isnan(label_np),
            "label_archive_mismatch": (~np.isnan(label_np) & (label_np != expected_label))
            if expected_label is not None else np.zeros(n, dtype=bool),
            "invalid_sha256": ~sha_ok,
            "unparsable_date": bad_dates.any(axis=0),
        }
        any_bad = np.zeros(n, dtype=bool)
        for mask in flags.values():
            any_bad |= mask
        reasons: list[list[str]] = [[] for _ in range(n)]
        details: list[str | None] = [None] * n
        records: list[str | None] = [None] * n
        names = [schema.canonical_name(c) for c in present]
        date_names = list(schema.DATE_COLUMNS)
        bad_rows = np.flatnonzero(any_bad)
        if bad_rows.size:
            raw_rows = pa.RecordBatch.from_arrays([raw[c] for c in columns], names=columns).take(pa.array(bad_rows)).to_pylist()
            labels_text = label_text.to_pylist()
            for k, i in enumerate(bad_rows):
                reasons[i] = [r for r, mask in flags.items() if mask[i]]
                parts = []
                if malformed[i]:
                    parts.append(f"cells do not match the header's {len(columns)} columns")
                for title, matrix, labels in (("empty", missing, names), ("non-numeric", non_numeric, names),
                                              ("negative", negative, names), ("out of range", too_large, names),
                                              ("bad date", bad_dates, date_names),
                                              ("not UTF-8 (bytes replaced by U+FFFD)", not_utf8, text_columns)):
                    hits = np.flatnonzero(matrix[:, i])
                    if hits.size:
                        parts.append(f"{title}: " + ",".join(labels[h] for h in hits))
                if flags["invalid_label"][i]:
                    parts.append(f"label: {labels_text[i] if labels_text[i] is not None else '<empty>'}")
                details[i] = "; ".join(parts)
                # A malformed row's cells are misaligned; keep the line Spark read instead.
                records[i] = corrupt[i].as_py() if malformed[i] else json.dumps(raw_rows[k], ensure_ascii=False)

        def optional_text(raw_name: str) -> pa.Array:
            return _text(raw[raw_name]) if raw_name in raw else pa.nulls(n, pa.string())

        arrays = {
            "source_file": col["source_file"], "source_member": col["source_member"],
            "source_row": col["source_row"], "run_id": col["run_id"],
            "data_source": pa.array([data_source] * n, pa.string()),
            "sha256": pc.utf8_lower(sha_text),
            "label": label,
            "malware_family": optional_text(schema.FAMILY),
            "package_name": optional_text(schema.PACKAGE),
            **{name: features.get(name, pa.nulls(n, pa.int64())) for name in schema.FEATURE_COLUMNS},
            "scanners": _as_long(raw["Scanners"]) if "Scanners" in raw else pa.nulls(n, pa.int64()),
            "detection_ratio": _as_double(raw["Detection_Ratio"]) if "Detection_Ratio" in raw else pa.nulls(n, pa.float64()),
            **dates,
            **{schema.canonical_name(c): _text(raw[c]) for c in known_extras},
            **{extra_column_name(c): _text(raw[c]) for c in unknown},
            "reasons": pa.array(reasons, pa.list_(pa.string())),
            "detail": pa.array(details, pa.string()),
            "raw_record": pa.array(records, pa.string()),
        }
        return pa.RecordBatch.from_arrays([arrays[name] for name, _ in fields], schema=out_schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield typed_batch(batch)

    return run
