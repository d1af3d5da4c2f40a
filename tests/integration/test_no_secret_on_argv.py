"""No secret of the stack on any process command line, where every local user can read it
(`ps`, /proc/<pid>/cmdline): a transform (its Spark JVM), a training, `dfp serve` and the
stack's own servers (in the s3 pass: PostgreSQL, SeaweedFS, lakeFS on both, MLflow with its
auth app) run while a watcher reads every process's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dfp_core.ml.serve import wait_until_ready
from dfp_core.stack import free_port
from tests.argv_watch import ArgvWatch, stack_secrets

pytestmark = pytest.mark.both_profiles
DFP = [sys.executable, "-m", "dfp_core.cli"]


def _run(*args: str, cwd: Path) -> dict:
    done = subprocess.run([*DFP, *args], capture_output=True, text=True, env=os.environ, cwd=cwd, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_secret_on_any_command_line(stack, repo, small_input, tmp_path, report):
    secrets = stack_secrets(stack["settings"].home / "stack.env")
    assert "LAKEFS_SECRET_ACCESS_KEY" in secrets
    if stack["profile"] == "s3":
        assert {"DFP_POSTGRES_PASSWORD", "DFP_S3_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= set(secrets)
    with ArgvWatch(secrets) as watch:
        merged = _run("transform", "--input", str(small_input), "--repo", repo, "--run-id", "argv", cwd=tmp_path)
        trained = _run("train", "--repo", repo, "--ref", merged["merge_commit"], "--max-epochs", "1",
                       "--hidden-dims", "16", "--latent-dim", "4", "--model-name", f"argv_{repo}", "--no-baselines",
                       cwd=tmp_path)
        port = free_port()
        server = subprocess.Popen([*DFP, "serve", "--model-uri", f"models:/argv_{repo}/{trained['model_version']}",
                                   "--port", str(port)], env=os.environ, cwd=tmp_path, start_new_session=True)
        try:
            wait_until_ready(server, f"http://127.0.0.1:{port}", timeout_s=300)
            assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert watch.leaks == [], watch.leaks
    # The watch saw what it was meant to: the Spark JVM (started by PySpark with the session's
    # settings) and the scoring server, besides the stack's own servers.
    seen = " ".join(watch.commands_seen)
    assert any("bin/spark-submit" in c and c.endswith("pyspark-shell") for c in watch.commands_seen)
    assert "lakefs" in seen and "mlflow" in seen
    if stack["profile"] == "s3":
        assert "postgres -D" in seen and "weed server" in seen  # PostgreSQL, SeaweedFS
    report["faults"].append({"fault": f"the stack's secrets on a process command line ({stack['profile']} profile: "
                                      "transform, training, dfp serve, the servers)",
                             "secrets_watched": len(watch.secrets), "command_lines_seen": len(watch.commands_seen),
                             "leaks": len(watch.leaks)})
