"""The code version recorded with every commit and run."""

from __future__ import annotations

import functools
import os
import subprocess

from dfp_core import __version__
from dfp_core.settings import REPO_ROOT


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``DFP_CODE_VERSION`` (set in images), else the git commit (+dirty), else the package version."""
    if os.environ.get("DFP_CODE_VERSION"):
        return os.environ["DFP_CODE_VERSION"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"git:{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"dfp-kronodroid {__version__}"
