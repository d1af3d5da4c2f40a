"""Shared fixtures. Integration tests run against a real stack that this
session starts on free ports in its own DFP_HOME, and stops at the end."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SUBSET = REPO_ROOT.parent / "shared" / "data" / "kronodroid" / "kronodroid_real_device_2019_subset.csv"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    from dfp_core.settings import StackSettings
    from dfp_core.stack import free_port

    home = tmp_path_factory.mktemp("dfp-home")
    return StackSettings(home=home, lakefs_port=free_port(), mlflow_port=free_port())


@pytest.fixture(scope="session")
def stack(stack_settings):
    """A real lakeFS + MLflow stack for the whole test session."""
    from dfp_core import stack as stack_mod

    with stack_mod.running(stack_settings, log=lambda m: print(m, file=sys.stderr)) as running:
        yield {"settings": stack_settings, **running}


@pytest.fixture(scope="session")
def lakefs(stack):
    from dfp_core.lakefs_ops import LakeFS

    return LakeFS()


@pytest.fixture(scope="session")
def spark(stack):
    from dfp_core.spark import spark_session

    session = spark_session("dfp-tests")
    yield session
    session.stop()


@pytest.fixture
def repo(lakefs):
    """A fresh lakeFS repository with a committed main branch."""
    name = "t" + uuid.uuid4().hex[:10]
    lakefs.ensure_repository(name)
    return name


@pytest.fixture(scope="session")
def real_subset() -> Path:
    if not REAL_SUBSET.is_file():
        pytest.skip(f"real KronoDroid subset not present at {REAL_SUBSET}")
    return REAL_SUBSET
