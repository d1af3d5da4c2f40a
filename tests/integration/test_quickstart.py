"""`dfp quickstart` as a new user runs it: a fresh DFP_HOME, the CLI, a quiet terminal, and the
two pages it names at the end answering with the model version and the commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dfp_core.progress import plain
from dfp_core.settings import read_env_file
from dfp_core.stack import free_port
from tests.inputs import archive_rows, csv_text

pytestmark = pytest.mark.slow
DFP = [sys.executable, "-m", "dfp_app.cli"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A new user's environment: nothing of the test session's stack, a home of its own."""
    home = tmp_path_factory.mktemp("quickstart") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "MLFLOW_", "DFP_"))}
    env.update({"DFP_HOME": str(home), "DFP_LAKEFS_PORT": str(free_port()), "DFP_MLFLOW_PORT": str(free_port())})
    yield env
    subprocess.run([*DFP, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)


def _quickstart(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DFP, "quickstart", "--rows", "400", "--max-epochs", "1", "--repo", "quick", *args],
                          env=env, capture_output=True, text=True, timeout=1500)


def test_the_quickstart_is_quiet_and_its_links_show_the_model_and_the_commit(fresh):
    done = _quickstart(fresh)
    assert done.returncode == 0, done.stderr[-4000:]
    shown = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(shown) <= 40, done.stderr
    assert sum(": done in " in line for line in shown) == 3 and "executor" not in done.stderr.lower()
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    log = Path(summary["log"])
    assert log.parent == Path(fresh["DFP_HOME"]) / "logs" and str(log) in done.stderr
    # What the terminal did not show is in the log: the servers, Spark and KFP's executors.
    text = plain(log.read_text())  # KFP colours its lines
    assert "kronodroid-spark-transform" in text and "finished with status SUCCESS" in text

    creds = read_env_file(Path(summary["credentials_file"]))
    lakefs_keys = (creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"])
    mlflow_user = (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"])
    # The lakeFS page is the UI's; the commit it names is the merge the model was trained on.
    page = requests.get(summary["lakefs_commit_ui"], timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    api = f"{summary['lakefs_endpoint']}/api/v1/repositories/quick/commits/{summary['lakefs_commit']}"
    commit = requests.get(api, auth=lakefs_keys, timeout=30)
    assert commit.status_code == 200 and commit.json()["id"] == summary["lakefs_commit"]
    # The MLflow page asks for the login in stack.env, then shows the version, whose lineage
    # tags point at that commit.
    ui = summary["mlflow_model_ui"]
    assert requests.get(ui, timeout=30).status_code == 401
    assert requests.get(ui, auth=mlflow_user, timeout=30).status_code == 200
    version = requests.get(f"{summary['mlflow_tracking_uri']}/api/2.0/mlflow/model-versions/get", auth=mlflow_user,
                           params={"name": summary["model_name"], "version": summary["model_version"]}, timeout=30)
    tags = {t["key"]: t["value"] for t in version.json()["model_version"]["tags"]}
    assert tags["data.lakefs_ref"] == summary["lakefs_commit"] and tags["data.lakefs_repository"] == "quick"
    assert summary["lineage_tags"]["data.lakefs_ref"] == summary["lakefs_commit"]
    # The final block says the data is the generator's, and gives the run's own test figures
    # and the baselines' in the README's terms.
    assert "synthetic, KronoDroid-shaped sample from dfp generate" in done.stderr
    run_id = version.json()["model_version"]["run_id"]
    run = requests.get(f"{summary['mlflow_tracking_uri']}/api/2.0/mlflow/runs/get", auth=mlflow_user,
                       params={"run_id": run_id}, timeout=30).json()["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert f"ROC-AUC {metrics['test_roc_auc']:.3f}; malware caught: " in done.stderr
    assert f"PCA {metrics['eval_roc_auc__pca']:.3f}, IsolationForest " in done.stderr


def test_a_failing_stage_shows_its_cause_and_the_log(fresh, tmp_path):
    data = tmp_path / "header-only" / "real_device"
    data.mkdir(parents=True)
    from dfp_core.kronodroid.generator import generate

    generate(tmp_path / "g", 40, seed=3)
    _, rows = archive_rows(tmp_path / "g" / "real_device" / "real_legitimate_v1.zip")
    (data / "real_extra.csv").write_text(csv_text(rows[:1]))
    done = _quickstart(fresh, "--input", str(data.parent))
    assert done.returncode == 2
    err = done.stderr
    assert "[3/4] pipeline" in err and "failed after" in err and "full log: " in err
    assert "has a header but no data rows" in err  # the step's own line, from the log's tail
    assert err.strip().splitlines()[-1].startswith("error: the pipeline's step kronodroid-spark-transform failed")
    assert json.loads(done.stdout.strip().splitlines()[-1])["exit_code"] == 2
