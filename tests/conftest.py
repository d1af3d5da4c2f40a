"""Shared fixtures. Integration tests run against a real stack that this
session starts on free ports in its own DFP_HOME, and stops at the end.

Like a user's shell after `dfp stack up`, the session's environment then holds
DFP_HOME and the ports only; every command finds the endpoints and keys in
``$DFP_HOME/stack.env``.

``DFP_TEST_STACK_PROFILE=s3`` starts the session's stack with the s3 profile
(PostgreSQL + SeaweedFS); `make test` runs the ``both_profiles`` tests a second
time that way.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_PROFILE = os.environ.get("DFP_TEST_STACK_PROFILE") or "local"
REAL_SUBSET = REPO_ROOT.parent / "shared" / "data" / "kronodroid" / "kronodroid_real_device_2019_subset.csv"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    if TEST_PROFILE != "s3":  # the s3 profile's own tests run in the s3 pass only
        s3_only = [item for item in items if item.get_closest_marker("s3_profile")]
        if s3_only:
            config.hook.pytest_deselected(items=s3_only)
            items[:] = [item for item in items if not item.get_closest_marker("s3_profile")]


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    from dfp_core.stack import postgres as postgres_server, seaweedfs as seaweedfs_server
    from dfp_core.errors import StackError
    from dfp_core.settings import StackSettings
    from dfp_core.stack import free_port

    settings = StackSettings.from_env({**os.environ, "DFP_STACK_PROFILE": TEST_PROFILE})
    if TEST_PROFILE == "s3":
        try:  # what `make setup-s3` provides when it can; without it the s3 run skips
            postgres_server.bin_dir(settings.postgres_bin_dir)
            seaweedfs_server.binary(REPO_ROOT, settings.cache, settings.seaweedfs_bin)
        except StackError as exc:
            pytest.skip(f"s3 profile unavailable: {exc}")
    home = tmp_path_factory.mktemp("dfp-home")
    # The suites make a repository per test, so the session's lakeFS keeps one admin key; the
    # pipeline's repository-scoped user has its own tests (test_lakefs_acl.py).
    return dataclasses.replace(settings, home=home, lakefs_port=free_port(), mlflow_port=free_port(),
                               postgres_port=free_port(), s3_port=free_port(), lakefs_acl=False)


@pytest.fixture(scope="session")
def stack(stack_settings):
    """A real lakeFS + MLflow stack (of ``TEST_PROFILE``) for the whole test session."""
    from dfp_core import stack as stack_mod
    from dfp_core.progress import note

    with stack_mod.running(stack_settings, log=note) as running, pytest.MonkeyPatch.context() as env:
        for key, value in running["env"].items():
            env.setenv(key, value)
        for key in ("LAKEFS_ENDPOINT", "LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI",
                    "LAKEFS_STORAGE_NAMESPACE", "DFP_STACK_PROFILE"):
            env.delenv(key, raising=False)  # found through DFP_HOME, as a user's commands find them
        creds = {k: v for k, v in running["credentials"].items() if k.startswith(("LAKEFS_", "MLFLOW_", "DFP_S3_"))}
        yield {"settings": stack_settings, "status": running["status"], "env": {**running["env"], **creds},
               "profile": TEST_PROFILE}


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
        return run_transform(rt, TransformConfig(**values)).to_json()  # the JSON line `dfp transform` prints

    return run


@pytest.fixture
def repo(lakefs):
    """A fresh lakeFS repository with a committed main branch."""
    name = "t" + uuid.uuid4().hex[:10]
    lakefs.ensure_repository(name)
    return name


@pytest.fixture(scope="session")
def small_input(tmp_path_factory) -> Path:
    """120 generated rows in the four archives, for suites that run many transforms (read only)."""
    from dfp_core.kronodroid.generator import generate

    out = tmp_path_factory.mktemp("small-input")
    generate(out, 120, seed=8)
    return out


@pytest.fixture(scope="session")
def real_subset() -> Path:
    if not REAL_SUBSET.is_file():
        pytest.skip(f"real KronoDroid subset not present at {REAL_SUBSET}")
    return REAL_SUBSET


FAULT_REPORT = REPO_ROOT / "build" / "fault_report.json"


@pytest.fixture(scope="session")
def report():
    """The fault suite's report (``build/fault_report.json``; the table in bench/README.md):
    tests across modules add what they injected and what came of it. Written at the end of a
    session that added anything."""
    import json

    entries = {"faults": [], "bad_inputs": []}
    yield entries
    if not entries["faults"] and not entries["bad_inputs"]:
        return
    totals = {
        "faults_injected": len(entries["faults"]),
        "partial_merges": sum(1 for f in entries["faults"] if f.get("partial_merge")),
        "rows_lost": sum(f.get("rows_lost", 0) for f in entries["faults"]),
        "bad_input_kinds": len(entries["bad_inputs"]),
    }
    FAULT_REPORT.parent.mkdir(exist_ok=True)
    FAULT_REPORT.write_text(json.dumps({"totals": totals, **entries}, indent=2, sort_keys=True))
