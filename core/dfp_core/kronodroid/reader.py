"""Read KronoDroid-format files (the four archives, or CSVs) without Spark.

The same checks and typing as the Spark transform: ``raw_files.scan`` finds and
checks the files (headers, archive integrity), every CSV part is read with
pyarrow with all cells as strings under positional names ``_c0.._cN`` (raw
names repeat case-insensitively: syscall ``reboot``, permission ``REBOOT``),
and ``arrow_typing.make_typer`` types the rows and gives the reasons a row is
rejected. Unlike the transform, duplicates are kept: a scorer scores every row.

Rows pyarrow cannot split into the header's number of cells are rejected as
``malformed_row``; pyarrow does not report where they were, so their
``source_row`` is null.
"""

from __future__ import annotations

import codecs
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dfp_core.errors import InputDataError
from dfp_core.kronodroid import schema
from dfp_core.kronodroid.arrow_typing import SHA256_PATTERN, make_typer, output_fields, raw_column
from dfp_core.kronodroid.raw_files import CsvPart, open_part, scan
from dfp_core.splits import arrow_sample_id, sample_id

BLOCK_SIZE = 4 << 20  # ~4,000 KronoDroid rows: a block in flight, typed and scored, is ~150 MB
MALFORMED = "malformed_row"
# Key columns of the valid frame, before the features.
VALID_KEYS = (
    "sample_id", "sha256", "data_source", "label", "malware_family", "package_name",
    "sample_date", "sample_year", "source_file", "source_member", "source_row", "input_index",
)
REJECTED_COLUMNS = (
    "sample_id", "sha256", "data_source", "label", "source_file", "source_member", "source_row",
    "input_index", "reason", "reasons", "detail",
)
_SHA256 = re.compile(SHA256_PATTERN)
_TYPED_KEEP = (
    "source_file", "source_member", "source_row", "data_source", "sha256", "label", "malware_family",
    "package_name", "earliest_mod_date", "latest_mod_date", *schema.FEATURE_COLUMNS, "reasons", "detail",
)
_EMPTY_TYPED = (pa.schema(output_fields([*schema.REQUIRED_RAW])).empty_table().select(list(_TYPED_KEEP))
                .append_column("input_index", pa.array([], pa.int64())))


def input_parts(path: Path) -> list[tuple[Path, CsvPart]]:
    """(file on disk, part) for every CSV part under a directory, or of one file."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"input {path} does not exist")
    return scan(path).parts


class ReplacingUtf8(io.RawIOBase):
    """A binary stream's bytes as valid UTF-8, invalid sequences replaced by U+FFFD, as
    Spark's CSV reader does: pyarrow refuses the whole file otherwise, and the typer
    rejects the rows whose text holds a replacement (``invalid_utf8``)."""

    def __init__(self, raw, chunk: int = 1 << 20):
        self.raw, self.chunk = raw, chunk
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # Fills the whole buffer unless the input ends: pyarrow's CSV reader makes a batch of
        # each read, so short reads would cut the input into ~1 MB batches, not BLOCK_SIZE ones
        # (and every batch costs a fixed ~500 Arrow calls to type).
        view, filled = memoryview(buffer).cast("B"), 0
        while filled < len(view):
            if not self.pending:
                data = self.raw.read(self.chunk)
                self.pending = self.decoder.decode(data, final=not data).encode("utf-8")
                if not data and not self.pending:
                    break
            n = min(len(view) - filled, len(self.pending))
            view[filled:filled + n] = self.pending[:n]
            self.pending = self.pending[n:]
            filled += n
        return filled

    def close(self) -> None:
        self.raw.close()
        super().close()


def _raw_batches(file: Path, part: CsvPart, malformed: list) -> Iterator[pa.RecordBatch]:
    """The part's rows as the typer's input: provenance + ``_cN`` string columns."""
    names = [raw_column(i) for i in range(len(part.columns))]

    def on_invalid(row) -> str:
        malformed.append(row)
        return "skip"

    stream = ReplacingUtf8(open_part(file, part))
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=BLOCK_SIZE),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                # Only empty cells are missing, as in the Spark transform; "NA" or
                # "n/a" in a count column is a non-numeric value, not a null.
                null_values=[""],
            ),
        )
        row = 0
        for batch in reader:
            n = batch.num_rows
            if n == 0:
                continue
            provenance = [
                pa.array([part.source_file] * n, pa.string()),
                pa.array([part.member] * n, pa.string()),
                pa.array(np.arange(row + 1, row + n + 1, dtype=np.int64)),
                pa.array(["local"] * n, pa.string()),
            ]
            row += n
            yield pa.RecordBatch.from_arrays(
                provenance + list(batch.columns), names=["source_file", "source_member", "source_row", "run_id", *names]
            )
    except pa.ArrowInvalid as exc:
        raise InputDataError(f"{part.source_file}:{part.member} is not a readable CSV: {exc}") from None
    finally:
        stream.close()


def _sample_dates(frame: pd.DataFrame) -> pd.Series:
    """``coalesce(latest_mod_date, earliest_mod_date)``, as the transform defines sample_date."""
    return frame["latest_mod_date"].combine_first(frame["earliest_mod_date"])


def sample_years(frame: pd.DataFrame) -> pd.Series:
    """Year of each row's sample date (nullable Int64): ``sample_year`` when present,
    else derived from ``sample_date`` or the mod dates like the transform does."""
    if "sample_year" in frame.columns:
        return pd.to_numeric(frame["sample_year"], errors="coerce").astype("Int64")
    if "sample_date" in frame.columns:
        dates = frame["sample_date"]
    elif {"latest_mod_date", "earliest_mod_date"} <= set(frame.columns):
        dates = _sample_dates(frame)
    else:
        raise InputDataError("the frame has no sample_year, sample_date or mod-date columns to take years from")
    return pd.to_datetime(dates, errors="coerce").dt.year.astype("Int64")


def iter_kronodroid(path: Path, parts: list[tuple[Path, CsvPart]] | None = None
                    ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``read_kronodroid`` in pieces, in input order, one CSV block (``BLOCK_SIZE``) at a
    time, so memory stays bounded however large the input: (valid, rejected) frames of
    the same columns, ``input_index`` continuing across pieces. A part's malformed rows
    come in a piece of their own after its last block. ``parts``: ``input_parts(path)``
    when already scanned."""
    offset = 0
    for file, part in parts if parts is not None else input_parts(Path(path)):
        malformed: list = []
        typer = make_typer(part.columns, part.data_source, part.expected_label)
        for batch in typer(_raw_batches(file, part, malformed)):
            table = pa.Table.from_batches([batch.select(list(_TYPED_KEEP))])
            n = table.num_rows
            table = table.append_column("input_index", pa.array(np.arange(offset, offset + n, dtype=np.int64)))
            offset += n
            ok = pc.equal(pc.list_value_length(table.column("reasons")), 0)
            bad = table.filter(pc.invert(ok)).select(
                ["sha256", "data_source", "label", "source_file", "source_member", "source_row", "input_index", "reasons", "detail"]
            ).to_pandas()
            yield _valid_frame(table.filter(ok)), _rejected_frame(bad)
        if malformed:
            bad = pd.DataFrame({
                "sha256": None, "data_source": part.data_source, "label": None,
                "source_file": part.source_file, "source_member": part.member, "source_row": None,
                "input_index": np.arange(offset, offset + len(malformed), dtype=np.int64),
                "reasons": [[MALFORMED]] * len(malformed),
                "detail": [f"{r.actual_columns} cells, expected {r.expected_columns}: {(r.text or '')[:200]}" for r in malformed],
            })
            offset += len(malformed)
            yield _valid_frame(_EMPTY_TYPED), _rejected_frame(bad)


def read_kronodroid(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid, rejected) rows of every KronoDroid CSV part under ``path`` (a
    directory as ``raw_files.scan`` accepts, a known archive, or a CSV).

    ``valid``: rows that type cleanly, duplicates kept, with ``sample_id``,
    ``sha256``, ``data_source``, ``label``, ``malware_family``, ``package_name``,
    ``sample_date``, ``sample_year`` (nullable), provenance (``source_file``,
    ``source_member``, ``source_row`` 1-based within the part, ``input_index``
    0-based over all rows read) and every ``schema.FEATURE_COLUMNS`` column
    (float64 where a part lacks the column or has nulls, else int64).
    ``rejected``: ``REJECTED_COLUMNS``; ``reason`` is the first reason code,
    ``reasons`` all of them joined by ``,``.
    Every row read is in exactly one of the two. Everything is held in memory:
    ``iter_kronodroid`` streams.
    """
    valid_parts, rejected_parts = [], []
    for valid, rejected in iter_kronodroid(Path(path)):
        valid_parts.append(valid)
        rejected_parts.append(rejected)
    if not valid_parts:
        return _valid_frame(_EMPTY_TYPED), _rejected_frame(pd.DataFrame())
    valid = pd.concat(valid_parts, ignore_index=True)
    rejected = pd.concat(rejected_parts, ignore_index=True)
    return valid, rejected.sort_values("input_index", kind="stable").reset_index(drop=True)


def _valid_frame(table: pa.Table) -> pd.DataFrame:
    # Built in Arrow in its final column order, so pandas copies the ~480 columns once.
    keys = {
        "sample_id": arrow_sample_id(table.column("sha256"), table.column("data_source")),
        "sample_date": pc.coalesce(table.column("latest_mod_date"), table.column("earliest_mod_date")),
        "label": pc.cast(table.column("label"), pa.int64()),
    }
    names = [c for c in VALID_KEYS if c != "sample_year"]
    columns = [keys[c] if c in keys else table.column(c) for c in names]
    frame = pa.table([*columns, *table.select(list(schema.FEATURE_COLUMNS)).columns],
                     names=[*names, *schema.FEATURE_COLUMNS]).to_pandas(date_as_object=False)
    frame.insert(VALID_KEYS.index("sample_year"), "sample_year", frame["sample_date"].dt.year.astype("Int64"))
    return frame


def _rejected_frame(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in REJECTED_COLUMNS})
        frame["source_row"] = frame["source_row"].astype("Int64")
        frame["label"] = frame["label"].astype("Int64")
        return frame
    reasons = [list(r) if r is not None else [] for r in frame["reasons"]]
    frame["reason"] = [r[0] if r else None for r in reasons]
    frame["reasons"] = [",".join(r) for r in reasons]
    frame["sample_id"] = [
        sample_id(s, d) if isinstance(s, str) and _SHA256.match(s) else None
        for s, d in zip(frame["sha256"], frame["data_source"])
    ]
    frame["label"] = pd.array(frame["label"], dtype="Int64")
    frame["source_row"] = pd.array(frame["source_row"], dtype="Int64")
    return frame[list(REJECTED_COLUMNS)].sort_values("input_index", kind="stable").reset_index(drop=True)
