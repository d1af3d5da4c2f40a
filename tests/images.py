"""What the container tests share about building images."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest

# tools/scripts/build_images.sh (and bootstrap_compose.sh after it) exit with 75 when Docker's
# data root lacks the free disk the builds need, checked before building: the machine cannot
# run these tests, which is not a defect of the images.
NOT_ENOUGH_DISK = 75


def skip_without_disk(done: subprocess.CompletedProcess) -> None:
    if done.returncode == NOT_ENOUGH_DISK:
        pytest.skip(done.stderr.strip().splitlines()[-1])


REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_IMAGES = ("train", "spark")


@functools.lru_cache(maxsize=None)
def _build(names: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / "tools/scripts/build_images.sh"), *names], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=3600)


def build_images(*names: str) -> dict:
    """``make images`` for ``names`` (layer cache reused; once per test session), or a skip
    where the disk cannot hold them; the script's JSON summary."""
    done = _build(tuple(names))
    skip_without_disk(done)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
