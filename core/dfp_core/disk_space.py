"""Is there room for a transform? Its raw input, measured before anything is written,
against the free space where its bytes will land.

A transform writes about ten times its (zipped) input under a local stack's DFP_HOME (the raw
objects, then the staging, quarantine, fct and index tables as Avro, lakeFS's metadata;
measured 9.2-9.6x at 20,000 and 60,000 generated rows, bench/README.md), and Spark's scratch
(shuffle files, the jars it copies) takes a fixed part plus a little per input byte. A disk
that fills midway fails the run safely, but it can take a server down with it (lakeFS's KV
dies with SIGBUS on a full disk): refusing early is kinder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dfp_core.errors import DatasetError

MB = 1_000_000
HOME_BYTES_PER_INPUT_BYTE = 12  # measured 9.2-9.6, with a margin
SCRATCH_FIXED_BYTES = 256 * MB
SCRATCH_BYTES_PER_INPUT_BYTE = 4


@dataclass(frozen=True)
class Need:
    what: str  # "lakeFS's data under DFP_HOME"
    path: Path
    bytes: int


def input_bytes(input_dir: Path) -> int:
    """The bytes of every file under the input folder (links are not followed)."""
    return sum(p.lstat().st_size for p in Path(input_dir).rglob("*") if p.is_file() and not p.is_symlink())


def needs(size: int, home: Path | None, scratch: Path | None) -> list[Need]:
    """What a transform of ``size`` input bytes writes where (None: not on this machine)."""
    out = []
    if home is not None:
        out.append(Need("lakeFS's data under DFP_HOME", home, size * HOME_BYTES_PER_INPUT_BYTE))
    if scratch is not None:
        out.append(Need("Spark's scratch", scratch, SCRATCH_FIXED_BYTES + size * SCRATCH_BYTES_PER_INPUT_BYTE))
    return out


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require(size: int, wanted: list[Need]) -> None:
    """DatasetError in one line when a filesystem has less free space than what lands on it
    (needs on one filesystem add up)."""
    by_device: dict[int, list[Need]] = {}
    for need in wanted:
        by_device.setdefault(os.stat(_existing(need.path)).st_dev, []).append(need)
    for group in by_device.values():
        total = sum(n.bytes for n in group)
        free = shutil.disk_usage(_existing(group[0].path)).free
        if free < total:
            parts = " + ".join(f"{n.what} ({n.path}) ~{n.bytes / MB:.0f} MB" for n in group)
            raise DatasetError(
                f"not enough free disk for this transform: {_existing(group[0].path)} has {free / MB:.0f} MB free, "
                f"and {size / MB:.1f} MB of input needs {parts}; nothing was written. Free some space, or move "
                "DFP_HOME or SPARK_LOCAL_DIRS to a larger disk"
            )
