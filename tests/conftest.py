"""Shared fixtures. Integration tests run against a real stack that this
session starts on free ports in its own DFP_HOME, and stops at the end.

Like a user's shell after `dfp stack up`, the session's environment then holds
DFP_HOME and the ports only; every command finds the endpoints and keys in
``$DFP_HOME/stack.env``.
"""

from __future__ import annotations

import dataclasses
import os
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
    return dataclasses.replace(StackSettings.from_env(os.environ), home=home, lakefs_port=free_port(),
                               mlflow_port=free_port())


@pytest.fixture(scope="session")
def stack(stack_settings):
    """A real lakeFS + MLflow stack for the whole test session."""
    from dfp_core import stack as stack_mod
    from dfp_core.progress import note

    with stack_mod.running(stack_settings, log=note) as running, pytest.MonkeyPatch.context() as env:
        for key, value in running["env"].items():
            env.setenv(key, value)
        for key in ("LAKEFS_ENDPOINT", "LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
            env.delenv(key, raising=False)  # found through DFP_HOME, as a user's commands find them
        creds = {k: v for k, v in running["credentials"].items() if k.startswith(("LAKEFS_", "MLFLOW_"))}
        yield {"settings": stack_settings, "status": running["status"], "env": {**running["env"], **creds}}


@pytest.fixture(scope="session")
def rt(stack):
    """The tests' runtime context, built like an entry point builds its own."""
    from dfp_core.runtime import Runtime

    with Runtime.from_env(os.environ, app_name="dfp-tests") as runtime:
        yield runtime


@pytest.fixture(scope="session")
def lakefs(rt):
    return rt.lakefs


@pytest.fixture(scope="session")
def spark(rt):
    return rt.spark()


@pytest.fixture(scope="session")
def transform(rt):
    """``transform(input_dir=..., repo=..., **TransformConfig fields)``: a whole transform run."""
    from dfp_core.params import TransformConfig
    from dfp_spark.transform_run import run_transform

    def run(**values):
        return run_transform(rt, TransformConfig(**values))

    return run


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
