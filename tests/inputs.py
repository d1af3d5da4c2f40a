"""Hostile-but-plausible inputs built from generated archives, shared by unit and integration tests."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path


def csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def archive_rows(archive: Path) -> tuple[str, list[list[str]]]:
    """(member name, rows including the header) of a one-member generated archive."""
    with zipfile.ZipFile(archive) as zf:
        name = zf.namelist()[0]
        text = zf.read(name).decode()
    return name, list(csv.reader(io.StringIO(text, newline="")))


def split_member(archives: Path, out: Path, first: int) -> tuple[Path, int]:
    """``real_device/real_malware_v1.zip`` rewritten into ``out`` as two members with
    the same base name in different folders: ``a/`` holds the first ``first`` data
    rows, ``b/`` the rest. Returns (input folder, data rows in all)."""
    name, rows = archive_rows(archives / "real_device" / "real_malware_v1.zip")
    folder = out / "real_device"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "real_malware_v1.zip", "w") as zf:
        zf.writestr(f"a/{name}", csv_text([rows[0], *rows[1:first + 1]]))
        zf.writestr(f"b/{name}", csv_text([rows[0], *rows[first + 1:]]))
    return out, len(rows) - 1


def only_dfp_home(stack: dict) -> dict[str, str]:
    """A command's environment with only DFP_HOME of the test stack set (plus what any
    shell has: PATH, HOME, and JAVA_HOME when the machine sets it)."""
    import os

    env = {"DFP_HOME": stack["env"]["DFP_HOME"], "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": os.environ.get("HOME", "/root")}
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    return env
