"""What the container tests share about building images."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# tools/scripts/build_images.sh (and bootstrap_compose.sh after it) exit with 75 when Docker's
# data root lacks the free disk the builds need, checked before building: the machine cannot
# run these tests, which is not a defect of the images.
NOT_ENOUGH_DISK = 75
# What the tests after the container and cluster tests still write (a model's served
# environments, the s3 pass's stack, Spark's scratch): the images and the node's imports must
# leave it free, or a machine short of disk fails those tests instead of skipping these.
SUITE_RESERVE_MB = 3000


def build_env(**extra: str) -> dict[str, str]:
    """The environment for build_images.sh / bootstrap_compose.sh: the suite's reserve kept free."""
    return {**os.environ, "DFP_IMAGES_KEEP_FREE_MB": str(SUITE_RESERVE_MB), **extra}


def skip_unless_free(path: Path, need_mb: int, what: str) -> None:
    """Skips, in one line, where ``path``'s filesystem cannot hold ``need_mb`` plus the reserve."""
    free_mb = shutil.disk_usage(path).free // 1_000_000
    if free_mb < need_mb + SUITE_RESERVE_MB:
        pytest.skip(f"not enough disk for {what}: {free_mb} MB free under {path}, about {need_mb} MB needed "
                    f"and {SUITE_RESERVE_MB} MB kept for the rest of the suite")


def skip_without_disk(done: subprocess.CompletedProcess) -> None:
    if done.returncode == NOT_ENOUGH_DISK:
        pytest.skip(done.stderr.strip().splitlines()[-1])


REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_IMAGES = ("train", "spark")


@functools.lru_cache(maxsize=None)
def _build(names: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / "tools/scripts/build_images.sh"), *names], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=3600, env=build_env())


def build_images(*names: str) -> dict:
    """``make images`` for ``names`` (layer cache reused; once per test session), or a skip
    where the disk cannot hold them; the script's JSON summary."""
    done = _build(tuple(names))
    skip_without_disk(done)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
