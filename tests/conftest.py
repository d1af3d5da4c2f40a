"""Shared fixtures. Integration tests run against a real stack that this
session starts on free ports in its own DFP_HOME, and stops at the end."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    from dfp_core.settings import StackSettings

    home = tmp_path_factory.mktemp("dfp-home")
    return StackSettings(home=home, lakefs_port=free_port(), mlflow_port=free_port())


@pytest.fixture(scope="session")
def stack(stack_settings):
    """A real lakeFS + MLflow stack for the whole test session."""
    from dfp_core import stack as stack_mod
    from dfp_core.settings import read_env_file

    status = stack_mod.up(stack_settings, log=lambda m: print(m, file=sys.stderr))
    creds = read_env_file(stack_settings.home / "stack.env")
    env = {
        "DFP_HOME": str(stack_settings.home),
        "DFP_LAKEFS_PORT": str(stack_settings.lakefs_port),
        "DFP_MLFLOW_PORT": str(stack_settings.mlflow_port),
        "LAKEFS_ENDPOINT": creds["LAKEFS_ENDPOINT"],
        "LAKEFS_ACCESS_KEY_ID": creds["LAKEFS_ACCESS_KEY_ID"],
        "LAKEFS_SECRET_ACCESS_KEY": creds["LAKEFS_SECRET_ACCESS_KEY"],
        "MLFLOW_TRACKING_URI": creds["MLFLOW_TRACKING_URI"],
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield {"settings": stack_settings, "status": status, "env": env}
    finally:
        stack_mod.down(stack_settings, log=lambda m: None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
