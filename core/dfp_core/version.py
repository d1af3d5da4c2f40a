"""The code version recorded with every commit and run."""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys

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


def execution_tags() -> dict[str, str]:
    """Where a run executes, recorded on it: the image (``DFP_IMAGE``, set in the images),
    the host (a container's id inside Docker or a pod's name), the interpreter, the code."""
    return {
        "dfp.image": os.environ.get("DFP_IMAGE") or "none",
        "dfp.container": _container_id() or "none",
        "dfp.hostname": socket.gethostname(),
        "dfp.python": sys.executable,
        "dfp.code_version": code_version(),
    }


def _container_id() -> str | None:
    """The Docker container this process runs in: Docker bind-mounts the container's own
    /etc/hostname from /var/lib/docker/containers/<id>/, which mountinfo shows."""
    try:
        with open("/proc/self/mountinfo") as handle:
            match = re.search(r"/containers/([0-9a-f]{64})/hostname", handle.read())
    except OSError:
        return None
    return match.group(1) if match else None
