"""What the container tests share about building images."""

from __future__ import annotations

import subprocess

import pytest

# tools/scripts/build_images.sh (and bootstrap_compose.sh after it) exit with 75 when Docker's
# data root lacks the free disk the builds need, checked before building: the machine cannot
# run these tests, which is not a defect of the images.
NOT_ENOUGH_DISK = 75


def skip_without_disk(done: subprocess.CompletedProcess) -> None:
    if done.returncode == NOT_ENOUGH_DISK:
        pytest.skip(done.stderr.strip().splitlines()[-1])
