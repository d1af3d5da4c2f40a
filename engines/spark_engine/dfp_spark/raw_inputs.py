"""Raw KronoDroid inputs: find and check them locally, then version them in
lakeFS under ``raw/kronodroid/`` on the run branch, where the Spark job reads them.

Layout on the branch (exactly this run's inputs; older ones stay in history):
  raw/kronodroid/<source>/<file>                          the file as given (zip or csv)
  raw/kronodroid/<source>/extracted/<archive stem>/<member path>  zip members, for Spark
  raw/kronodroid/_manifest.json                           what is where, checksums, labels,
                                                          data rows and bytes of every part

A zip member is identified by its full path inside the archive, so two members
with the same base name in different folders are two parts. Every part is
measured when it is scanned (data rows, bytes, SHA-256 and MD5 of its bytes);
the transform checks the stored objects against these and reconciles its row
counts per part, so nothing can be silently overwritten or dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from dfp_core import schema
from dfp_core.errors import InputDataError
from dfp_core.lakefs_ops import LakeFS, file_digest
from dfp_core.progress import note, warn

RAW_PREFIX = "raw/kronodroid/"
MANIFEST_PATH = RAW_PREFIX + "_manifest.json"
GENERATOR_MARKER = "GENERATED.json"
IGNORED_NAMES = {GENERATOR_MARKER, "README.md", "README.txt", ".DS_Store"}


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


def missing_required(columns: list[str]) -> list[str]:
    present = set(columns)
    return [c for c in schema.REQUIRED_RAW if c not in present]


def _header_row(rows: Iterator[list[str]], where: str) -> list[str]:
    try:
        header = next(rows)
    except StopIteration:
        raise InputDataError(f"{where} is empty (no header row)") from None
    except csv.Error as exc:
        raise InputDataError(f"{where} is not a readable CSV: {exc}") from None
    if len(header) < 2:
        raise InputDataError(f"{where} does not look like a KronoDroid CSV (header has {len(header)} column)")
    return [h.strip().lstrip("\ufeff") for h in header]


def _header(stream: io.TextIOBase, where: str) -> list[str]:
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
    columns = _header_row(rows, where)
    _check_header(columns, where)  # a wrong header is the first thing to report
    try:
        data_rows = sum(1 for row in rows if row)
    except csv.Error as exc:
        raise InputDataError(f"{where} is not a readable CSV: {exc}") from None
    if data_rows == 0:
        raise InputDataError(f"{where} has a header but no data rows; nothing to load")
    return Measured(columns, data_rows, digesting.size, digesting.sha256.hexdigest(), digesting.md5.hexdigest())


def _check_header(columns: list[str], where: str) -> None:
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
        spec = schema.classify_input(PurePosixPath(rel.as_posix()))
        if spec is None:
            known = ", ".join(sorted(schema.KNOWN_ARCHIVES))
            raise InputDataError(
                f"unknown input file {rel}: expected one of the KronoDroid archives ({known}) "
                "or a CSV under an emulator/ or real_device/ folder"
            )
        found.append((path, spec))
    if not found:
        raise InputDataError(f"no KronoDroid archives or CSV files found in {input_dir}")
    return found


def member_path(name: str, where: str) -> str:
    """A zip member's full path, checked to stay inside its archive's folder."""
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or any(p in ("..", "") for p in path.parts) or not path.parts:
        raise InputDataError(f"{where}: member {name!r} has an unsafe path (absolute, '..' or backslashes)")
    return path.as_posix()


def _zip_members(path: Path, rel: str) -> list[zipfile.ZipInfo]:
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
            member_path(member.filename, f"archive {rel}")
        return members


def _source_relative(rel: PurePosixPath, data_source: str) -> str:
    """A file's path under ``raw/kronodroid/<source>/``: its path in the input
    folder, without a leading folder named after the source."""
    parts = rel.parts[1:] if len(rel.parts) > 1 and rel.parts[0].lower() == data_source else rel.parts
    return "/".join(parts)


def scan(input_dir: Path, measure_parts: bool = False) -> tuple[list[tuple[Path, InputFile]], dict | None]:
    """Check every input (archive integrity, CSV headers) before anything is written.

    ``measure_parts``: also read every part whole (data rows, bytes, digests),
    as the transform does before it uploads; zero data rows is then an error.
    """
    files = []
    for path, spec in discover(input_dir):
        rel = PurePosixPath(path.relative_to(input_dir).as_posix())
        target_dir = f"{RAW_PREFIX}{spec.data_source}/"
        entry = InputFile(
            relative_path=rel.as_posix(), sha256=file_digest(path), size_bytes=path.stat().st_size,
            data_source=spec.data_source, lakefs_path=target_dir + _source_relative(rel, spec.data_source),
        )
        if path.suffix.lower() == ".zip":
            stem = Path(path.name).stem
            members = _zip_members(path, rel.as_posix())
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
        files.append((path, entry))
    _check_unique([e.lakefs_path for _, e in files] + [p.lakefs_path for _, e in files for p in e.parts if p.lakefs_path != e.lakefs_path])
    _check_unique([f"{p.source_file}:{p.member}" for _, e in files for p in e.parts])
    marker = Path(input_dir) / GENERATOR_MARKER
    generator = json.loads(marker.read_text()) if marker.is_file() else None
    return files, generator


def _read_part(raw, part: CsvPart, where: str, measure_part: bool) -> None:
    """Fill in the part's columns (checked) and, when asked, its measurements."""
    if measure_part:
        measured = measure(raw, where)
        part.columns = measured.columns
        part.data_rows, part.size_bytes = measured.data_rows, measured.size_bytes
        part.sha256, part.md5 = measured.sha256, measured.md5
    else:
        part.columns = _header(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""), where)
        _check_header(part.columns, where)


def _check_unique(names: list[str]) -> None:
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputDataError(f"two inputs would be stored at the same path: {', '.join(clashes)}")


def _upload_if_changed(lakefs: LakeFS, repo: str, branch: str, lakefs_path: str, local: Path) -> bool:
    """Upload unless the branch already holds identical bytes (raw data rarely changes)."""
    existing = lakefs.stat(repo, branch, lakefs_path)
    if existing is not None and existing.size_bytes == local.stat().st_size and existing.checksum == file_digest(local, "md5"):
        return False
    lakefs.upload_file(repo, branch, lakefs_path, local)
    return True


def upload(lakefs: LakeFS, repo: str, branch: str, input_dir: Path, scanned: tuple | None = None) -> RawManifest:
    """Put exactly these inputs under raw/kronodroid/ on ``branch``.

    ``scanned``: what ``scan(input_dir, measure_parts=True)`` returned, when the
    caller already checked the inputs (they are scanned here otherwise).
    """
    files, generator = scanned or scan(input_dir, measure_parts=True)
    manifest = RawManifest(files=[f for _, f in files], synthetic=bool(generator and generator.get("synthetic")), generator=generator)
    wanted = {MANIFEST_PATH}
    uploaded = skipped = 0
    scratch = Path(tempfile.mkdtemp(prefix="dfp-raw-"))
    try:
        for path, entry in files:
            wanted.add(entry.lakefs_path)
            changed = _upload_if_changed(lakefs, repo, branch, entry.lakefs_path, path)
            uploaded, skipped = uploaded + changed, skipped + (not changed)
            if path.suffix.lower() != ".zip":
                continue
            with zipfile.ZipFile(path) as archive:
                for part in entry.parts:
                    local = scratch / part.lakefs_path
                    local.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(part.member) as src, open(local, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    wanted.add(part.lakefs_path)
                    changed = _upload_if_changed(lakefs, repo, branch, part.lakefs_path, local)
                    uploaded, skipped = uploaded + changed, skipped + (not changed)
                    local.unlink()
            note(f"{entry.relative_path}: {len(entry.parts)} CSV part(s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stale = [p for p in lakefs.list_paths(repo, branch, RAW_PREFIX) if p not in wanted]
    for path in stale:
        lakefs.delete_object(repo, branch, path)
    lakefs.upload_bytes(repo, branch, MANIFEST_PATH, manifest.to_json().encode())
    note(f"raw inputs: {uploaded} uploaded, {skipped} unchanged, {len(stale)} stale removed")
    verify_stored(lakefs, repo, branch, manifest)
    return manifest


def verify_stored(lakefs: LakeFS, repo: str, ref: str, manifest: RawManifest) -> None:
    """Every part on ``ref`` holds exactly the bytes measured at scan time."""
    missing_measure = [p.where for p in manifest.parts if p.data_rows is None or p.md5 is None]
    if missing_measure:
        raise InputDataError(
            f"the raw manifest at lakefs://{repo}/{ref}/{MANIFEST_PATH} has no row counts for "
            f"{', '.join(missing_measure[:5])} (written by an older version); "
            "upload the inputs again with `dfp transform --input DIR`"
        )
    for part in manifest.parts:
        stored = lakefs.stat(repo, ref, part.lakefs_path)
        if stored is None:
            raise InputDataError(f"{part.where}: lakefs://{repo}/{ref}/{part.lakefs_path} is missing")
        if stored.size_bytes != part.size_bytes or stored.checksum != part.md5:
            raise InputDataError(
                f"{part.where}: lakefs://{repo}/{ref}/{part.lakefs_path} holds {stored.size_bytes} bytes "
                f"(md5 {stored.checksum}), not the {part.size_bytes} bytes (md5 {part.md5}) that were read; "
                "it was overwritten or changed"
            )


def load_manifest(lakefs: LakeFS, repo: str, ref: str) -> RawManifest:
    if lakefs.stat(repo, ref, MANIFEST_PATH) is None:
        raise InputDataError(
            f"no raw inputs at lakefs://{repo}/{ref}/{RAW_PREFIX} (missing {MANIFEST_PATH}); "
            "upload them first (`dfp transform --input DIR`)"
        )
    return RawManifest.from_json(lakefs.read_bytes(repo, ref, MANIFEST_PATH).decode())
