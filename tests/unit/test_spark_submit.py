"""``dfp_spark.submit.run_local`` around a stand-in for spark-submit (a Python script
that behaves like spark-submit's PythonRunner: the job's stderr merged into stdout)."""

from __future__ import annotations

import sys

import pytest

from dfp_core.settings import LakeFSSettings, SparkSettings
from dfp_spark import submit

FAKE_JOB = r"""
import json, os, sys
sys.stderr = sys.stdout  # what PythonRunner does to the job's streams
print("    progress of the job", file=sys.stderr)
if os.environ.get("FAIL"):
    print("error: the input has no data rows", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"endpoint": os.environ.get("LAKEFS_ENDPOINT"), "key": os.environ.get("LAKEFS_ACCESS_KEY_ID"),
                  "kept": os.environ.get("KEPT")}))
"""


@pytest.fixture
def fake_submit(tmp_path, monkeypatch):
    script = tmp_path / "job.py"
    script.write_text(FAKE_JOB)
    monkeypatch.setattr(submit, "spark_submit_command", lambda args, settings: [sys.executable, str(script), *args])


def test_the_job_gets_its_callers_lakefs_and_returns_its_summary(fake_submit, capfd):
    lakefs = LakeFSSettings(endpoint="http://127.0.0.1:18123", access_key_id="AKIAEXAMPLE", secret_access_key="s")
    # The caller's environment points elsewhere (or nowhere); the job must use the caller's settings.
    summary = submit.run_local([], SparkSettings(), lakefs, {"LAKEFS_ENDPOINT": "http://127.0.0.1:8000", "KEPT": "1"})
    assert summary == {"endpoint": "http://127.0.0.1:18123", "key": "AKIAEXAMPLE", "kept": "1"}
    assert "progress of the job" in capfd.readouterr().err


def test_a_failed_job_shows_its_error_line(fake_submit, capfd):
    with pytest.raises(submit.SparkJobError, match="exited with code 2"):
        submit.run_local([], SparkSettings(), LakeFSSettings(), {"FAIL": "1"})
    assert "error: the input has no data rows" in capfd.readouterr().err
