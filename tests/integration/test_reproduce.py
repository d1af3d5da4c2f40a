"""Issue: rebuild and verify a model's data from its registry tags; score; evaluate."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from dfp_core import lineage
from dfp_core.kronodroid.generator import generate
from dfp_core.ml.evaluate_model import evaluate_model_version
from dfp_core.ml.reproduce import reproduce
from dfp_core.ml.train_kronodroid_autoencoder import train
from dfp_core.params import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(rt, lakefs, transform, tmp_path_factory):
    """Run A -> model version; then run B rewrites main; A's run branch is gone."""
    repo = "repro" + uuid.uuid4().hex[:8]
    first = tmp_path_factory.mktemp("repro-a")
    generate(first, 500, seed=31, start_year=2010, end_year=2016)
    summary_a = transform(input_dir=first, repo=repo, run_id="repro-a")
    name = f"kronodroid_autoencoder_{repo}"
    result = train(rt, TrainConfig(repo=repo, ref="main", max_epochs=2, batch_size=64, hidden_dims=(64, 32), latent_dim=8,
                                   seed=3, accelerator="cpu", devices="1", model_name=name))
    second = tmp_path_factory.mktemp("repro-b")
    generate(second, 400, seed=32)
    summary_b = transform(input_dir=second, repo=repo, run_id="repro-b", allow_shrink=True)
    for branch in ("run-repro-a", "run-repro-b"):
        lakefs.delete_branch(repo, branch)  # a no-op: publishing already froze them into tags
    return {"repo": repo, "name": name, "version": result.model_version, "a": summary_a, "b": summary_b,
            "train": result}


def _dfp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)


@pytest.mark.both_profiles
def test_reproduce_matches_after_main_moved_on(rt, trained, spark, lakefs):
    assert lakefs.resolve_commit(trained["repo"], "main") == trained["b"]["merge_commit"]
    assert not lakefs.branch_exists(trained["repo"], "run-repro-a")
    report = reproduce(rt, trained["name"], version=trained["version"])
    assert report.matches, report.differences
    assert report.rows == trained["train"].dataset_rows
    tags = trained["train"].lineage_tags
    assert report.dataset_ids == {s: tags[lineage.SPLIT_ID_TAGS[s]] for s in ("train", "val", "test")}


def test_reproduce_by_alias_with_retrain_reports_metric_differences(rt, trained, spark, lakefs):
    report = reproduce(rt, trained["name"], alias="candidate", retrain=True)
    assert report.matches and report.version == trained["version"]
    assert "test_roc_auc" in report.metric_differences
    assert abs(report.metric_differences["test_roc_auc"]) < 1e-6  # same data, seed and hyperparameters


def test_reproduce_fails_loudly_when_feature_definitions_change(rt, trained, spark, lakefs, tmp_path, monkeypatch):
    for rel in lineage.FEATURE_DEFINITION_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, tmp_path / rel)
    edited = tmp_path / lineage.FEATURE_DEFINITION_FILES[0]
    edited.write_text(edited.read_text() + "\n# an edit to the feature definitions\n")
    monkeypatch.setattr(lineage, "definitions_root", lambda: tmp_path)
    report = reproduce(rt, trained["name"], version=trained["version"])
    assert not report.matches
    assert any(d.startswith("feature definitions changed") for d in report.differences)
    assert any(d.startswith("dataset.train_id") for d in report.differences)


def test_reproduce_fails_loudly_for_an_unknown_commit(trained, stack):
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    source = client.get_model_version(trained["name"], trained["version"])
    tags = dict(source.tags)
    tags[lineage.TAG_REF] = "0" * 64
    mlflow.set_tracking_uri(stack["env"]["MLFLOW_TRACKING_URI"])
    bogus = mlflow.register_model(source.source, trained["name"], tags=tags)
    result = _dfp("reproduce", "--model", trained["name"], "--version", bogus.version)
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["matches"] is False and summary["differences"][0].startswith("commit missing")
    assert "mismatch: commit missing" in result.stderr


def test_score_generated_data_one_row_per_input(trained, tmp_path):
    data = tmp_path / "in"
    generate(data, 60, seed=5, layout="subset")
    [csv_path] = data.rglob("*.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    idx = {c: i for i, c in enumerate(rows[0])}
    rows[3][idx["read"]] = "n/a"
    rows[7][idx["sha256"]] = "xyz"
    with open(csv_path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    out = tmp_path / "scores.csv"
    result = _dfp("score", "--model-uri", f"models:/{trained['name']}/{trained['version']}", "--input", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows_in"] == 60 and summary["scored"] == 58 and summary["rejected"] == 2
    assert summary["rejected_by_reason"] == {"invalid_sha256": 1, "non_numeric_feature": 1}
    scores = pd.read_csv(out)
    assert len(scores) == 60
    rejected = scores[scores["status"] == "rejected"]
    assert sorted(rejected["source_row"]) == [3, 7] and rejected["anomaly_score"].isna().all()
    scored = scores[scores["status"] == "scored"]
    assert (scored["is_anomaly"] == (scored["anomaly_score"] > summary["threshold"])).all()


def test_score_real_subset(trained, real_subset, tmp_path):
    out = tmp_path / "real.parquet"
    result = _dfp("score", "--model-uri", f"models:/{trained['name']}@candidate", "--input", str(real_subset), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    scores = pd.read_parquet(out)
    assert len(scores) == 1622 and set(scores["label"].dropna().unique()) <= {0, 1}


def test_score_a_lakefs_ref(trained, tmp_path):
    out = tmp_path / "ref.csv"
    uri = f"lakefs://{trained['repo']}/{trained['a']['merge_commit']}"
    result = _dfp("score", "--model-uri", f"models:/{trained['name']}/{trained['version']}", "--input", uri, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_csv(out)) == trained["a"]["fct_rows"]


def test_evaluate_logs_baselines_and_time_split(rt, trained, spark, lakefs, stack):
    comparison = evaluate_model_version(rt, trained["name"], trained["version"])
    for method in ("autoencoder", "pca", "isolation_forest", "random_forest"):
        assert f"eval_roc_auc__{method}" in comparison.metrics
        assert f"eval_tpr_at_fpr_5pct__{method}" in comparison.metrics
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    logged = client.get_run(trained["train"].run_id).data.metrics
    # The version's own operating point on its test split, as training logged it.
    point = comparison.operating_point
    assert point["target_fpr"] == pytest.approx(0.05)
    for key in ("threshold", "test_fpr", "test_recall", "test_tpr_at_fpr_5pct"):
        assert point[key] == pytest.approx(logged[key], abs=1e-6), key
    assert logged["eval_roc_auc__random_forest"] == pytest.approx(comparison.metrics["eval_roc_auc__random_forest"])
    drift = evaluate_model_version(rt, trained["name"], trained["version"], time_split=True, train_end_year=2013,
                                   log=False)
    years = {int(k.rsplit("__", 1)[1]) for k in drift.metrics if k.startswith("drift_roc_auc__autoencoder__2")}
    assert years and min(years) > 2013
    assert {"drift_recall__autoencoder__later", "drift_fpr__autoencoder__later", "drift_tpr_at_fpr_5pct__pca__later"} <= set(drift.metrics)
    assert drift.operating_point["target_fpr"] == pytest.approx(0.05)
