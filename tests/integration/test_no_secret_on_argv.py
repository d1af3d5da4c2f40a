"""No secret of the stack on any process command line, where every local user can read it
(`ps`, /proc/<pid>/cmdline): a watcher reads every process's command line while `dfp
transform` (its Spark JVM), `dfp train`, `dfp score`, `dfp kserve` and `dfp serve` run, with the
stack's servers beside them. Each of those commands also ends its stdout with its JSON line
(the other commands' JSON lines: test_cli_json.py). In the s3 pass the watcher reads the s3
profile's own servers (PostgreSQL, SeaweedFS, lakeFS on both, MLflow with its auth app); the
commands are the same code in both profiles."""

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

DFP = [sys.executable, "-m", "dfp_app.cli"]


def _run(*args: str, cwd: Path) -> dict:
    done = subprocess.run([*DFP, *args], capture_output=True, text=True, env=os.environ, cwd=cwd, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in last, last
    return last


def _secrets(stack) -> dict[str, str]:
    secrets = stack_secrets(stack["settings"].home / "stack.env")
    assert "LAKEFS_SECRET_ACCESS_KEY" in secrets
    return secrets


def test_no_secret_on_any_command_line(stack, repo, small_input, tmp_path, report):
    if stack["profile"] != "local":
        pytest.skip("the commands' own run is the local pass's")
    with ArgvWatch(_secrets(stack)) as watch:
        merged = _run("transform", "--input", str(small_input), "--repo", repo, "--run-id", "argv", cwd=tmp_path)
        trained = _run("train", "--repo", repo, "--ref", merged["merge_commit"], "--max-epochs", "1",
                       "--hidden-dims", "16", "--latent-dim", "4", "--model-name", f"argv_{repo}", "--no-baselines",
                       cwd=tmp_path)
        uri = f"models:/argv_{repo}/{trained['model_version']}"
        _run("score", "--model-uri", uri, "--input", str(small_input), "--out", str(tmp_path / "s.csv"), cwd=tmp_path)
        _run("kserve", "--model", f"argv_{repo}", "--version", str(trained["model_version"]), "--storage-uri",
             "s3://bucket/model", "--out", str(tmp_path / "isvc.yaml"), cwd=tmp_path)
        port = free_port()
        server = subprocess.Popen([*DFP, "serve", "--model-uri", uri, "--port", str(port)], stdout=subprocess.PIPE,
                                  text=True, env=os.environ, cwd=tmp_path, start_new_session=True)
        try:
            wait_until_ready(server, f"http://127.0.0.1:{port}", timeout_s=300)
            assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=60)
    assert server.returncode == 0 and json.loads(out.strip().splitlines()[-1])["exit_code"] == 0
    assert watch.leaks == [], watch.leaks
    # The watch saw what it was meant to: the Spark JVM (PySpark starts it with the session's
    # settings; bin/spark-submit execs into it, so the JVM is the process that stays), the
    # scoring server and the stack's servers.
    seen = " ".join(watch.commands_seen)
    assert any("org.apache.spark.deploy.SparkSubmit" in c and c.endswith("pyspark-shell")
               for c in watch.commands_seen), "the watch never saw the transform's Spark JVM"
    assert "dfp_core.ml.serve_app" in seen and "lakefs" in seen and "mlflow" in seen
    report["faults"].append({"fault": "the stack's secrets on a process command line (transform, training, "
                                      "score, kserve, serve, lakeFS, MLflow)",
                             "secrets_watched": len(watch.secrets), "command_lines_seen": len(watch.commands_seen),
                             "leaks": len(watch.leaks)})


@pytest.mark.s3_profile
def test_no_secret_on_the_s3_profiles_servers(stack, report):
    import time

    with ArgvWatch(_secrets(stack)) as watch:
        time.sleep(1)
    assert {"DFP_POSTGRES_PASSWORD", "DFP_S3_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= set(watch.secrets)
    assert watch.leaks == [], watch.leaks
    seen = " ".join(watch.commands_seen)
    assert "postgres -D" in seen and "weed server" in seen and "lakefs run" in seen and "basic-auth" in seen
    report["faults"].append({"fault": "the s3 profile's secrets on its servers' command lines",
                             "secrets_watched": len(watch.secrets), "leaks": len(watch.leaks)})
