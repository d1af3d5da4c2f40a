"""Raw inputs in lakeFS: put exactly one run's inputs under ``raw/kronodroid/``
on its branch, where the Spark job reads them, and check that what is stored
there is, byte for byte, what was scanned."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from dfp_core import faults
from dfp_core.errors import InputDataError
from dfp_core.kronodroid.raw_files import MANIFEST_PATH, RAW_PREFIX, RawManifest, ScannedInputs, file_digest
from dfp_core.lakefs_ops import LakeFS
from dfp_core.progress import note


def _upload_if_changed(lakefs: LakeFS, repo: str, branch: str, lakefs_path: str, local: Path) -> bool:
    """Upload unless the branch already holds identical bytes (raw data rarely changes)."""
    existing = lakefs.stat(repo, branch, lakefs_path)
    if existing is not None and existing.size_bytes == local.stat().st_size and existing.checksum == file_digest(local, "md5"):
        return False
    lakefs.upload_file(repo, branch, lakefs_path, local)
    return True


def upload(lakefs: LakeFS, repo: str, branch: str, scanned: ScannedInputs) -> RawManifest:
    """Put exactly the scanned (and measured) inputs under raw/kronodroid/ on ``branch``."""
    manifest = scanned.manifest()
    wanted = {MANIFEST_PATH}
    uploaded = skipped = 0
    scratch = Path(tempfile.mkdtemp(prefix="dfp-raw-"))
    try:
        for path, entry in scanned.files:
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
                    faults.reached("upload")  # some parts stored, not all
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
