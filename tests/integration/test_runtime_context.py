"""Every `dfp` command, run as a user runs it after `dfp stack up` with only DFP_HOME
set, talks to that stack: its endpoints and keys come from $DFP_HOME/stack.env,
and nothing is written to the working directory (no stray ./mlflow.db)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.inputs import only_dfp_home


@pytest.fixture(scope="module")
def cli(stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cwd")
    env = only_dfp_home(stack)

    def dfp(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], env=env, cwd=workdir,
                              capture_output=True, text=True, timeout=900)
        if ok:
            assert done.returncode == 0, f"dfp {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done

    dfp.workdir = workdir
    return dfp


def _last_json(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quiet(done: subprocess.CompletedProcess, stack, logged: str) -> dict:
    """The command's JSON, after checking it was quiet: one stage line on the terminal, its
    output (``logged`` among it) in the log under DFP_HOME/logs its JSON names."""
    summary = _last_json(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 3 and " done in " in lines[-1], done.stderr[-3000:]
    log = Path(summary["log"])
    assert log.parent == Path(stack["env"]["DFP_HOME"]) / "logs" and logged in log.read_text()
    return summary


def test_every_command_with_only_dfp_home_talks_to_that_stack(cli, stack, rt, tmp_path):
    repo = "ctx" + uuid.uuid4().hex[:8]
    model = f"kronodroid_autoencoder_{repo}"
    status = _last_json(cli("stack", "status", "--json"))
    assert status["services"]["lakefs"]["endpoint"] == stack["settings"].lakefs_endpoint
    assert status["services"]["mlflow"]["healthy"] and status["home"] == stack["env"]["DFP_HOME"]

    data = tmp_path / "data"
    cli("generate", "--out", str(data), "--rows", "400", "--seed", "5")
    transformed = _quiet(cli("transform", "--input", str(data), "--repo", repo, "--run-id", "ctx"), stack,
                         "Spark transform on run-ctx")
    assert rt.lakefs.resolve_commit(repo, "main") == transformed["merge_commit"]  # in this stack's lakeFS

    trained = _quiet(cli("train", "--repo", repo, "--max-epochs", "1", "--hidden-dims", "32,16", "--latent-dim", "4",
                         "--batch-size", "64", "--accelerator", "cpu", "--devices", "1", "--model-name", model,
                         "--no-baselines", "--target-fpr", "0.1", "--train-on", "semi", "--score", "mse"), stack,
                     "Model Registry")
    version = rt.mlflow.get_model_version(model, trained["model_version"])  # in this stack's registry
    assert version.tags["data.lakefs_ref"] == transformed["merge_commit"]
    params = rt.mlflow.get_run(trained["run_id"]).data.params
    assert (params["train_on"], params["score"]) == ("semi", "mse")
    assert "Score (mse)" in version.description

    # The defect this guards against: `dfp score` ignored stack.env, made ./mlflow.db and found no model.
    scored = _last_json(cli("score", "--model-uri", f"models:/{model}/{trained['model_version']}",
                            "--input", str(data), "--out", str(tmp_path / "scores.csv")))
    assert scored["scored"] > 0
    # An mse version has no per-feature terms: `--explain` is refused by version, before any output.
    refused = cli("score", "--model-uri", f"models:/{model}@candidate", "--input", str(data), "--out",
                  str(tmp_path / "explained.csv"), "--explain", "3", ok=False)
    assert refused.returncode != 0 and not (tmp_path / "explained.csv").exists()
    assert (f"cannot explain the scores of version {trained['model_version']} of {model}: it scores with mse"
            in refused.stderr), refused.stderr[-2000:]

    report = _last_json(cli("reproduce", "--model", model, "--version", trained["model_version"]))
    assert report["matches"] is True
    evaluated = _last_json(cli("evaluate", "--model", model, "--version", trained["model_version"], "--no-log"))
    assert "eval_roc_auc__autoencoder" in evaluated["metrics"]
    assert evaluated["operating_point"]["target_fpr"] == pytest.approx(0.1)
    assert evaluated["operating_point"]["score"] == "mse"
    assert evaluated["operating_point"]["threshold"] == pytest.approx(trained["test_metrics"]["threshold"])

    piped = _last_json(cli("pipeline", "run-local", "--no-run-transform", "--repo", repo, "--max-epochs", "1",
                           "--hidden-dims", "32,16", "--latent-dim", "4", "--batch-size", "64", "--accelerator", "cpu",
                           "--model-name", model, "--no-baselines"))
    assert piped["lakefs_commit"] == transformed["merge_commit"] and int(piped["model_version"]) == 2

    assert sorted(p.name for p in cli.workdir.iterdir()) == []  # no mlflow.db, mlruns/ or spark-warehouse/
