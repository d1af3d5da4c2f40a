"""Raw KronoDroid inputs: find and check them locally, then version them in
lakeFS under ``raw/kronodroid/`` on the run branch, where the Spark job reads them.

Layout on the branch (exactly this run's inputs; older ones stay in history):
  raw/kronodroid/<source>/<file>                          the file as given (zip or csv)
  raw/kronodroid/<source>/extracted/<archive stem>/<member>.csv   zip members, for Spark
  raw/kronodroid/_manifest.json                           what is where, checksums, labels
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

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


def _header(stream: io.TextIOBase, where: str) -> list[str]:
    try:
        header = next(csv.reader(stream))
    except StopIteration:
        raise InputDataError(f"{where} is empty (no header row)") from None
    except csv.Error as exc:
        raise InputDataError(f"{where} is not a readable CSV: {exc}") from None
    if len(header) < 2:
        raise InputDataError(f"{where} does not look like a KronoDroid CSV (header has {len(header)} column)")
    return [h.strip().lstrip("\ufeff") for h in header]


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
    found = []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        if path.name in IGNORED_NAMES or path.name.startswith("."):
            continue
        rel = path.relative_to(input_dir)
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
        return members


def scan(input_dir: Path) -> tuple[list[tuple[Path, InputFile]], dict | None]:
    """Check every input (archive integrity, CSV headers) before anything is written."""
    files = []
    for path, spec in discover(input_dir):
        rel = path.relative_to(input_dir).as_posix()
        target_dir = f"{RAW_PREFIX}{spec.data_source}/"
        entry = InputFile(
            relative_path=rel, sha256=file_digest(path), size_bytes=path.stat().st_size,
            data_source=spec.data_source, lakefs_path=target_dir + path.name,
        )
        if path.suffix.lower() == ".zip":
            for member in _zip_members(path, rel):
                with zipfile.ZipFile(path) as archive, archive.open(member) as raw:
                    columns = _header(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""), f"{rel}:{member.filename}")
                _check_header(columns, f"{rel}:{member.filename}")
                stem = Path(path.name).stem
                entry.parts.append(CsvPart(
                    lakefs_path=f"{target_dir}extracted/{stem}/{PurePosixPath(member.filename).name}",
                    source_file=path.name, member=member.filename, data_source=spec.data_source,
                    expected_label=spec.expected_label, columns=columns,
                ))
        else:
            if path.stat().st_size == 0:
                raise InputDataError(f"{rel} is empty")
            with open(path, encoding="utf-8", errors="replace", newline="") as handle:
                columns = _header(handle, rel)
            _check_header(columns, rel)
            entry.parts.append(CsvPart(
                lakefs_path=entry.lakefs_path, source_file=path.name, member=path.name,
                data_source=spec.data_source, expected_label=spec.expected_label, columns=columns,
            ))
        files.append((path, entry))
    names = [e.lakefs_path for _, e in files]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputDataError(f"two inputs would be stored at the same path: {', '.join(clashes)}")
    marker = Path(input_dir) / GENERATOR_MARKER
    generator = json.loads(marker.read_text()) if marker.is_file() else None
    return files, generator


def _upload_if_changed(lakefs: LakeFS, repo: str, branch: str, lakefs_path: str, local: Path) -> bool:
    """Upload unless the branch already holds identical bytes (raw data rarely changes)."""
    existing = lakefs.stat(repo, branch, lakefs_path)
    if existing is not None and existing.size_bytes == local.stat().st_size and existing.checksum == file_digest(local, "md5"):
        return False
    lakefs.upload_file(repo, branch, lakefs_path, local)
    return True


def upload(lakefs: LakeFS, repo: str, branch: str, input_dir: Path) -> RawManifest:
    """Scan, then put exactly these inputs under raw/kronodroid/ on ``branch``."""
    files, generator = scan(input_dir)
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
    return manifest


def load_manifest(lakefs: LakeFS, repo: str, ref: str) -> RawManifest:
    if lakefs.stat(repo, ref, MANIFEST_PATH) is None:
        raise InputDataError(
            f"no raw inputs at lakefs://{repo}/{ref}/{RAW_PREFIX} (missing {MANIFEST_PATH}); "
            "upload them first (`dfp transform --input DIR`)"
        )
    return RawManifest.from_json(lakefs.read_bytes(repo, ref, MANIFEST_PATH).decode())
