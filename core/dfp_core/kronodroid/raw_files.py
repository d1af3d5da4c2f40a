"""Raw KronoDroid files on local disk: find them, check them, measure them.

An input is a folder of the four KronoDroid archives (or CSVs in the subset
format under ``emulator/`` or ``real_device/``), or one such file. Each CSV
inside is a *part*: a zip member, identified by its full path inside the
archive, or a plain CSV file. ``scan`` checks every part before anything is
written (archive integrity, required columns, safe paths) and, for the
transform, measures it (data rows, bytes, SHA-256 and MD5 of its bytes), so
that what was given can be reconciled with what was stored and read.

Where parts are stored in lakeFS (``lakefs_path``), relative to the ref:
  raw/kronodroid/<source>/<file>                          the file as given (zip or csv)
  raw/kronodroid/<source>/extracted/<archive stem>/<member path>  zip members, for Spark
  raw/kronodroid/_manifest.json                           this manifest
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from dfp_core.errors import InputDataError
from dfp_core.kronodroid import schema
from dfp_core.progress import warn

RAW_PREFIX = "raw/kronodroid/"
MANIFEST_PATH = RAW_PREFIX + "_manifest.json"
GENERATOR_MARKER = "GENERATED.json"
IGNORED_NAMES = {GENERATOR_MARKER, "README.md", "README.txt", ".DS_Store"}
# The largest cell a part may hold. The scorer's reader needs a whole row inside one
# block (``reader.BLOCK_SIZE``, 4 MiB); Python's csv module stops at 128 KiB by default.
# No KronoDroid value is longer than a few hundred characters.
MAX_CELL_CHARS = 1 << 20
# Decompression limits, checked on the sizes a zip declares before a byte is expanded
# (zipfile stops at the declared size and checks the CRC, so they cannot be exceeded).
# KronoDroid CSVs deflate about 6:1; a ratio beyond 100:1 is a zip bomb, not data.
MAX_EXPANSION_RATIO = 100
MAX_MEMBER_BYTES = 16 << 30


@dataclass
class CsvPart:
    """One CSV the Spark job reads: a zip member or a plain CSV file."""

    lakefs_path: str
    source_file: str  # the input file name (archive or csv)
    member: str  # member name inside the archive, or the csv name
    data_source: str
    expected_label: int | None
    columns: list[str]
    # Measured at scan time from the bytes given (None in manifests of older versions).
    data_rows: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    md5: str | None = None

    @property
    def where(self) -> str:
        """How error messages name the part: ``file:member`` for archive members."""
        return self.member if self.member == self.source_file else f"{self.source_file}:{self.member}"


@dataclass
class InputFile:
    relative_path: str
    sha256: str
    size_bytes: int
    data_source: str
    lakefs_path: str
    parts: list[CsvPart] = field(default_factory=list)


@dataclass
class RawManifest:
    files: list[InputFile]
    synthetic: bool
    generator: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RawManifest":
        data = json.loads(text)
        files = [
            InputFile(**{**f, "parts": [CsvPart(**p) for p in f["parts"]]}) for f in data["files"]
        ]
        return cls(files=files, synthetic=data["synthetic"], generator=data.get("generator"))

    @property
    def parts(self) -> list[CsvPart]:
        return [p for f in self.files for p in f.parts]

    def input_checksums(self) -> dict[str, str]:
        return {f.relative_path: f.sha256 for f in self.files}

    @property
    def data_rows(self) -> int | None:
        """The data rows of all parts as measured at scan time; None where a part was not
        measured (manifests of older versions)."""
        rows = [p.data_rows for p in self.parts]
        return None if any(r is None for r in rows) else sum(rows)


def missing_required(columns: list[str]) -> list[str]:
    present = set(columns)
    return [c for c in schema.REQUIRED_RAW if c not in present]


def _header_row(rows: Iterator[list[str]], where: str) -> list[str]:
    try:
        header = next(rows)
    except StopIteration:
        raise InputDataError(f"{where} is empty (no header row)") from None
    except csv.Error as exc:
        raise _csv_error(where, exc) from None
    if len(header) < 2:
        raise InputDataError(f"{where} does not look like a KronoDroid CSV (header has {len(header)} column)")
    return [h.strip().lstrip("\ufeff") for h in header]


@contextlib.contextmanager
def _cell_limit():
    """csv's field limit raised to ``MAX_CELL_CHARS`` while we read (it is process-wide)."""
    previous = csv.field_size_limit(MAX_CELL_CHARS)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_error(where: str, exc: csv.Error) -> InputDataError:
    if "field larger than field limit" in str(exc):
        return InputDataError(f"{where} has a cell over {MAX_CELL_CHARS >> 20} MiB; no KronoDroid value is that long")
    return InputDataError(f"{where} is not a readable CSV: {exc}")


def read_header(stream: io.TextIOBase, where: str) -> list[str]:
    with _cell_limit():
        return _header_row(csv.reader(stream), where)


class _DigestingReader(io.RawIOBase):
    """A binary stream that hashes and counts the bytes read through it."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.size += n
        self.sha256.update(data)
        self.md5.update(data)
        return n


@dataclass(frozen=True)
class Measured:
    columns: list[str]
    data_rows: int
    size_bytes: int
    sha256: str
    md5: str


def measure(raw, where: str) -> Measured:
    """Header (checked), data rows (CSV records after the header; blank lines are
    not rows) and digests of every byte of a binary CSV stream. Zero data rows is
    an error."""
    digesting = _DigestingReader(raw)
    text = io.TextIOWrapper(io.BufferedReader(digesting, 1 << 20), encoding="utf-8", errors="replace", newline="")
    rows = csv.reader(text)
    with _cell_limit():
        columns = _header_row(rows, where)
        check_header(columns, where)  # a wrong header is the first thing to report
        try:
            data_rows = sum(1 for row in rows if row)
        except csv.Error as exc:
            raise _csv_error(where, exc) from None
    if data_rows == 0:
        raise InputDataError(f"{where} has a header but no data rows; nothing to load")
    return Measured(columns, data_rows, digesting.size, digesting.sha256.hexdigest(), digesting.md5.hexdigest())


def check_header(columns: list[str], where: str) -> None:
    missing = missing_required(columns)
    if missing:
        shown = ", ".join(missing[:12]) + (f" ... and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise InputDataError(f"{where} lacks {len(missing)} required column(s): {shown}")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise InputDataError(f"{where} has duplicate column names: {', '.join(dupes)}")
    unknown = [c for c in columns if c not in schema.KNOWN_RAW]
    if unknown:
        warn(f"{where}: {len(unknown)} unknown column(s) kept in staging only: {', '.join(unknown[:8])}")


def discover(input_dir: Path) -> list[tuple[Path, schema.ArchiveSpec]]:
    """Every input file under ``input_dir`` with its spec; unknown files are errors."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputDataError(f"input directory {input_dir} does not exist")
    root = input_dir.resolve()
    found = []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        if path.name in IGNORED_NAMES or path.name.startswith("."):
            continue
        rel = path.relative_to(input_dir)
        if not path.resolve().is_relative_to(root):
            raise InputDataError(f"{rel} is a link to {path.resolve()}, outside the input folder {root}; copy the file in instead")
        found.append((path, _classify(PurePosixPath(rel.as_posix()), str(rel))))
    if not found:
        raise InputDataError(f"no KronoDroid archives or CSV files found in {input_dir}")
    return found


def _classify(path: PurePosixPath, shown: str) -> schema.ArchiveSpec:
    spec = schema.classify_input(path)
    if spec is None:
        known = ", ".join(sorted(schema.KNOWN_ARCHIVES))
        raise InputDataError(
            f"unknown input file {shown}: expected one of the KronoDroid archives ({known}), "
            "or a CSV whose name or folder says its device (emulator/, real_device/, emu_*.csv, real_*.csv)"
        )
    return spec


def member_path(name: str, where: str) -> str:
    """A zip member's full path, checked to stay inside its archive's folder."""
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or any(p in ("..", "") for p in path.parts) or not path.parts:
        raise InputDataError(f"{where}: member {name!r} has an unsafe path (absolute, '..' or backslashes)")
    return path.as_posix()


def zip_members(path: Path, rel: str) -> list[zipfile.ZipInfo]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputDataError(f"{rel} is not a valid zip archive") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if not members:
            raise InputDataError(f"archive {rel} is empty")
        for member in members:
            if not member.filename.lower().endswith(".csv"):
                raise InputDataError(f"archive {rel} contains {member.filename!r}, which is not a CSV file")
            if member.file_size == 0:
                raise InputDataError(f"archive {rel}: member {member.filename!r} is empty")
            check_expansion(member, rel)
            member_path(member.filename, f"archive {rel}")
        return members


def check_expansion(member: zipfile.ZipInfo, rel: str) -> None:
    """Refuse a member that would expand beyond ``MAX_MEMBER_BYTES`` or ``MAX_EXPANSION_RATIO``."""
    where = f"archive {rel}: member {member.filename!r}"
    if member.file_size > MAX_MEMBER_BYTES:
        raise InputDataError(f"{where} would expand to {member.file_size:,} bytes, over the limit of "
                             f"{MAX_MEMBER_BYTES:,} bytes per member; split it into smaller archives")
    ratio = member.file_size / max(member.compress_size, 1)
    if ratio > MAX_EXPANSION_RATIO:
        raise InputDataError(f"{where} would expand {ratio:.0f}x ({member.compress_size} to {member.file_size} bytes), "
                             f"over the {MAX_EXPANSION_RATIO}x limit: refused as a possible zip bomb")


def _source_relative(rel: PurePosixPath, data_source: str) -> str:
    """A file's path under ``raw/kronodroid/<source>/``: its path in the input
    folder, without a leading folder named after the source."""
    parts = rel.parts[1:] if len(rel.parts) > 1 and rel.parts[0].lower() == data_source else rel.parts
    return "/".join(parts)


@dataclass
class ScannedInputs:
    """What ``scan`` found: each file on disk with its entry, and the generator marker."""

    files: list[tuple[Path, InputFile]]
    generator: dict | None

    @property
    def parts(self) -> list[tuple[Path, CsvPart]]:
        return [(path, part) for path, entry in self.files for part in entry.parts]

    def manifest(self) -> RawManifest:
        synthetic = bool(self.generator and self.generator.get("synthetic"))
        return RawManifest(files=[entry for _, entry in self.files], synthetic=synthetic, generator=self.generator)


def scan(input_path: Path, measure_parts: bool = False) -> ScannedInputs:
    """Check every input (archive integrity, CSV headers, paths) before anything is written.

    ``input_path``: a folder (see ``discover``) or a single archive or CSV.
    ``measure_parts``: also read every part whole (data rows, bytes, digests),
    as the transform does before it uploads; zero data rows is then an error.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        found = [(input_path, _classify(PurePosixPath(input_path.absolute().as_posix()), input_path.name))]
        root = input_path.parent
    else:
        found, root = discover(input_path), input_path
    files = [(path, _scan_file(path, PurePosixPath(path.relative_to(root).as_posix()), spec, measure_parts))
             for path, spec in found]
    _check_unique([e.lakefs_path for _, e in files] + [p.lakefs_path for _, e in files for p in e.parts if p.lakefs_path != e.lakefs_path])
    _check_unique([f"{p.source_file}:{p.member}" for _, e in files for p in e.parts])
    marker = root / GENERATOR_MARKER
    generator = json.loads(marker.read_text()) if input_path.is_dir() and marker.is_file() else None
    return ScannedInputs(files, generator)


def _scan_file(path: Path, rel: PurePosixPath, spec: schema.ArchiveSpec, measure_parts: bool) -> InputFile:
    target_dir = f"{RAW_PREFIX}{spec.data_source}/"
    entry = InputFile(
        relative_path=rel.as_posix(), sha256=file_digest(path), size_bytes=path.stat().st_size,
        data_source=spec.data_source, lakefs_path=target_dir + _source_relative(rel, spec.data_source),
    )
    if path.suffix.lower() == ".zip":
        stem = Path(path.name).stem
        members = zip_members(path, rel.as_posix())
        with zipfile.ZipFile(path) as archive:
            for member in members:
                name = member_path(member.filename, rel.as_posix())
                part = CsvPart(
                    lakefs_path=f"{target_dir}extracted/{stem}/{name}", source_file=path.name, member=name,
                    data_source=spec.data_source, expected_label=spec.expected_label, columns=[],
                )
                with archive.open(member) as raw:
                    _read_part(raw, part, f"{rel}:{name}", measure_parts)
                entry.parts.append(part)
    else:
        if path.stat().st_size == 0:
            raise InputDataError(f"{rel} is empty")
        part = CsvPart(
            lakefs_path=entry.lakefs_path, source_file=path.name, member=rel.as_posix(),
            data_source=spec.data_source, expected_label=spec.expected_label, columns=[],
        )
        with open(path, "rb") as raw:
            _read_part(raw, part, rel.as_posix(), measure_parts)
        entry.parts.append(part)
    return entry


def open_part(path: Path, part: CsvPart):
    """A binary stream of one part of the file at ``path`` (close it when done)."""
    if path.suffix.lower() != ".zip":
        return open(path, "rb")
    archive = zipfile.ZipFile(path)
    stream = archive.open(part.member)
    close = stream.close

    def close_both() -> None:  # the member and its archive
        close()
        archive.close()

    stream.close = close_both
    return stream


def _read_part(raw, part: CsvPart, where: str, measure_part: bool) -> None:
    """Fill in the part's columns (checked) and, when asked, its measurements."""
    if measure_part:
        measured = measure(raw, where)
        part.columns = measured.columns
        part.data_rows, part.size_bytes = measured.data_rows, measured.size_bytes
        part.sha256, part.md5 = measured.sha256, measured.md5
    else:
        part.columns = read_header(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""), where)
        check_header(part.columns, where)


def _check_unique(names: list[str]) -> None:
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputDataError(f"two inputs would be stored at the same path: {', '.join(clashes)}")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed (sha256 for provenance; md5 matches lakeFS checksums)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()
