"""Issue: Feast + Lightning + MLflow. generate -> transform -> train on the real stack."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest

from dfp_core import iceberg, lineage
from dfp_core.kronodroid import schema
from dfp_core.errors import DatasetError, RefNotFoundError, TrackingError
from dfp_core.kronodroid.generator import generate
from dfp_core.iceberg import TableRef
from dfp_core.ml.pyfunc import as_model_input
from dfp_core.ml.train_kronodroid_autoencoder import train
from dfp_core.params import TrainConfig
from dfp_core.runtime import Runtime


@pytest.fixture(scope="module")
def transformed(transform, tmp_path_factory):
    repo = "train" + uuid.uuid4().hex[:8]
    data = tmp_path_factory.mktemp("train-data")
    generate(data, 900, seed=21)
    summary = transform(input_dir=data, repo=repo, run_id="train-fixture")
    return repo, summary


def _config(repo, ref, **overrides) -> TrainConfig:
    values = dict(repo=repo, ref=ref, max_epochs=2, batch_size=64, hidden_dims=(64, 32), latent_dim=8, seed=7,
                  accelerator="cpu", devices="1", model_name="kronodroid_autoencoder_" + repo)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.both_profiles
def test_train_registers_a_model_with_lineage_tags(rt, spark, lakefs, transformed, stack):
    repo, summary = transformed
    result = train(rt, _config(repo, "main"))

    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(result.model_name, result.model_version)
    expected = {
        "data.lakefs_repository": repo,
        "data.lakefs_ref": summary["merge_commit"],
        "data.source_table": schema.FCT_TABLE_FQN,
        "data.iceberg_snapshot_id": summary["snapshot_ids"][schema.FCT_TABLE_FQN],
        "feast.feature_view": "kronodroid_autoencoder_features",
        "feast.defs_sha256": lineage.defs_sha256(),
    }
    run_tags = client.get_run(result.run_id).data.tags
    for tags in (version.tags, run_tags):
        assert set(lineage.LINEAGE_TAGS) <= set(tags)
        assert {k: tags[k] for k in expected} == expected
        assert all(tags[t].startswith("ds-") for t in (lineage.TAG_TRAIN_ID, lineage.TAG_VAL_ID, lineage.TAG_TEST_ID))
    assert len({version.tags[t] for t in (lineage.TAG_TRAIN_ID, lineage.TAG_VAL_ID, lineage.TAG_TEST_ID)}) == 3
    assert client.get_model_version_by_alias(result.model_name, "candidate").version == result.model_version

    mlrun = client.get_run(result.run_id)
    inputs = {}
    for item in mlrun.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        inputs[tags["mlflow.data.context"]] = item.dataset
        assert tags["dataset_id"] == version.tags[lineage.SPLIT_ID_TAGS[tags["mlflow.data.context"]]]
    assert set(inputs) == {"train", "val", "test"}
    assert all(f"lakefs://{repo}/{summary['merge_commit']}/" in ds.source for ds in inputs.values())
    for split, ds in inputs.items():  # the profile counts the whole split; features typed as doubles
        assert json.loads(ds.profile) == {"num_rows": result.dataset_rows[split],
                                          "num_elements": result.dataset_rows[split] * (2 + len(schema.FEATURE_COLUMNS))}
        types = {spec["name"]: spec["type"] for spec in json.loads(ds.schema)["mlflow_colspec"]}
        assert {types[c] for c in schema.FEATURE_COLUMNS} == {"double"} and types["sample_id"] == "string"
    assert mlrun.data.params["max_epochs"] == "2"
    history = client.get_metric_history(result.run_id, "val_loss")
    assert len(history) == result.epochs_trained
    assert {"test_roc_auc", "test_pr_auc", "test_f1", "threshold", "train_recon_loss"} <= set(mlrun.data.metrics)
    # The operating point: the threshold set for 5% benign FPR on validation, and what test shows there.
    logged = mlrun.data.metrics
    assert logged["target_fpr"] == 0.05 and logged["val_fpr"] <= 0.05
    assert logged["val_benign"] > 0 and logged["fpr_95_low"] < 0.05 < logged["fpr_95_high"]
    assert {"test_fpr", "test_precision", "test_recall", "test_tpr_at_fpr_1pct", "test_tpr_at_fpr_5pct",
            "test_tpr_at_fpr_10pct"} <= set(logged)
    assert any(k.startswith("test_fpr__") for k in logged)  # per data source
    assert logged["test_tpr_at_fpr_1pct"] <= logged["test_tpr_at_fpr_5pct"] <= logged["test_tpr_at_fpr_10pct"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/loss_curves.png", "plots/roc_curve.png", "plots/pr_curve.png", "plots/error_histogram.png"} <= artifacts

    # The registered model loads as a pyfunc and scores a batch read back from the pinned table.
    with rt.tracking():  # the registry of the session's stack, not a default local one
        model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    version_description = client.get_model_version(result.model_name, result.model_version).description
    assert f"anomaly_score (grouped_error) > {result.test_metrics['threshold']:.6g}" in version_description
    assert "Score (grouped_error)" in version_description
    assert "Each group's standardised term is capped at 10. The smallest of them counts 4 times" in version_description
    assert "at most 5% of its benign apps are flagged" in version_description
    assert f"benign FPR {logged['test_fpr']:.3f}" in version_description and "TPR) at a benign FPR of" in version_description
    assert "476 numeric columns" in version_description and "sc_execve" in version_description
    table = TableRef(repo, summary["merge_commit"], schema.MART_NAMESPACE, schema.FCT_TABLE)
    batch = spark.table(iceberg.qualified(spark, table)).limit(32).toPandas()
    scores = model.predict(as_model_input(batch))
    assert len(scores) == 32 and np.isfinite(scores["reconstruction_error"]).all()
    assert (scores["reconstruction_error"] >= 0).all()
    assert np.isfinite(scores["anomaly_score"]).all()  # grouped_error: a sum of z-scores, 0 the benign mean
    assert (scores["is_anomaly"] == (scores["anomaly_score"] > result.test_metrics["threshold"])).all()


def test_same_inputs_and_seed_give_same_ids_and_metrics(rt, spark, lakefs, transformed):
    repo, summary = transformed
    commit = summary["merge_commit"]
    first = train(rt, _config(repo, commit, register=False))
    second = train(rt, _config(repo, commit, register=False))
    assert first.lineage_tags == second.lineage_tags
    assert first.content_sha256 == second.content_sha256
    assert first.test_metrics.keys() == second.test_metrics.keys()
    for key, value in first.test_metrics.items():
        assert second.test_metrics[key] == pytest.approx(value, abs=1e-6), key


def test_max_rows_per_split_is_a_deterministic_subset(spark, lakefs, transformed):
    from dfp_feast.retrieval import load_splits

    repo, summary = transformed
    a = load_splits(spark, lakefs, repo, "main", max_rows_per_split=25)
    b = load_splits(spark, lakefs, repo, summary["merge_commit"], max_rows_per_split=25)
    assert a.rows == {"train": 25, "val": 25, "test": 25}
    assert a.content_sha256 == b.content_sha256 and a.dataset_ids == b.dataset_ids
    full = load_splits(spark, lakefs, repo, "main")
    assert full.dataset_ids["train"] != a.dataset_ids["train"]
    assert set(a.frames["train"]["sample_id"]) <= set(full.frames["train"]["sample_id"])
    assert (full.frames["train"]["dataset_split"] == "train").all()


def test_entity_keys_from_the_index_give_the_splits_of_the_wide_rows(spark, lakefs, transformed, monkeypatch):
    """The transform's narrow entity index serves the keys of the snapshot it names; the splits,
    ids and content hashes are those of the keys read from the fct table's own rows, which still
    serve any other snapshot."""
    from dfp_feast import retrieval

    repo, summary = transformed
    commit, snapshot = summary["merge_commit"], summary["snapshot_ids"][schema.FCT_TABLE_FQN]
    fct = TableRef(repo, commit, schema.MART_NAMESPACE, schema.FCT_TABLE)
    assert retrieval._entity_index(spark, fct, snapshot) is not None
    assert retrieval._entity_index(spark, fct, int(snapshot) + 1) is None  # another snapshot: not this index
    used = []
    real = retrieval._entity_index
    monkeypatch.setattr(retrieval, "_entity_index", lambda *args: used.append(real(*args)) or used[-1])
    via_index = retrieval.load_splits(spark, lakefs, repo, commit, max_rows_per_split=40)
    assert used and used[-1] is not None
    monkeypatch.setattr(retrieval, "_entity_index", lambda *args: None)
    via_rows = retrieval.load_splits(spark, lakefs, repo, commit, max_rows_per_split=40)
    assert via_index.dataset_ids == via_rows.dataset_ids
    assert via_index.content_sha256 == via_rows.content_sha256 and via_index.rows == via_rows.rows


def test_the_splits_come_from_the_broadcast_join_with_the_same_rows_and_hashes(spark, lakefs, transformed, monkeypatch):
    """Each sample has one row: the offline store's broadcast join serves the retrieval. A table
    without the transform's read split size (as tables written before it) gets the point-in-time
    join only, and the same rows and content hashes."""
    from dfp_feast import offline_store, retrieval

    repo, summary = transformed
    jobs = []
    real = offline_store.ArrowSparkRetrievalJob._to_arrow_internal
    monkeypatch.setattr(offline_store.ArrowSparkRetrievalJob, "_to_arrow_internal",
                        lambda job, **kw: jobs.append(job) or real(job, **kw))
    broadcast = retrieval.load_splits(spark, lakefs, repo, summary["merge_commit"])
    assert [job.used_broadcast_join for job in jobs] == [True]

    branch = f"old-splits-{uuid.uuid4().hex[:6]}"
    lakefs.create_branch(repo, branch, summary["merge_commit"])
    name = iceberg.qualified(spark, TableRef(repo, branch, schema.MART_NAMESPACE, schema.FCT_TABLE))
    spark.sql(f"ALTER TABLE {name} UNSET TBLPROPERTIES ('{iceberg.READ_SPLIT_SIZE_PROPERTY}')")
    lakefs.commit(repo, branch, "the fct table as written before its read split size was set")
    general = retrieval.load_splits(spark, lakefs, repo, branch)
    assert jobs[-1].used_broadcast_join is None  # never tried
    assert general.spec.iceberg_snapshot_id == broadcast.spec.iceberg_snapshot_id  # a property, not a snapshot
    assert broadcast.rows == general.rows and broadcast.content_sha256 == general.content_sha256


def test_unknown_ref_is_a_clear_error(rt, spark, lakefs, transformed):
    repo, _ = transformed
    with pytest.raises(RefNotFoundError, match="no-such-ref"):
        train(rt, _config(repo, "no-such-ref"))


def test_table_missing_feature_columns_is_a_clear_error(rt, spark, lakefs, repo):
    lakefs.create_branch(repo, "thin", "main")
    thin = spark.createDataFrame([("emulator:" + "a" * 64, 1)], "sample_id string, label int")
    iceberg.write_table(spark, lakefs, thin, TableRef(repo, "thin", schema.MART_NAMESPACE, schema.FCT_TABLE))
    lakefs.commit(repo, "thin", "a thin table")
    with pytest.raises(DatasetError, match="lacks columns the feature views need: event_timestamp"):
        train(rt, _config(repo, "thin"))


def test_missing_table_is_a_clear_error(rt, spark, lakefs, repo):
    with pytest.raises(DatasetError, match="does not exist .* run `dfp transform`"):
        train(rt, _config(repo, "main"))


def test_a_pinned_snapshot_the_table_lacks_is_a_clear_error(spark, lakefs, transformed):
    from dfp_feast.retrieval import load_splits

    repo, summary = transformed
    merge_commit = summary["merge_commit"]
    table = TableRef(repo, merge_commit, schema.MART_NAMESPACE, schema.FCT_TABLE)
    current = iceberg.current_snapshot_id(spark, table)
    assert iceberg.has_snapshot(spark, table, current) and not iceberg.has_snapshot(spark, table, current + 1)
    with pytest.raises(DatasetError, match=f"Iceberg snapshot {current + 1} of .* is not in the table"):
        load_splits(spark, lakefs, repo, merge_commit, snapshot_id=current + 1)


def test_empty_split_is_a_clear_error(rt, transform, tmp_path):
    repo = "empty" + uuid.uuid4().hex[:8]
    generate(tmp_path, 120, seed=3)
    summary = transform(input_dir=tmp_path, repo=repo, train_ratio=1.0, val_ratio=0.0, test_ratio=0.0)
    assert summary["split_rows"] == {"train": summary["fct_rows"]}
    with pytest.raises(DatasetError, match="the val split is empty"):
        train(rt, _config(repo, "main"))


def test_unreachable_mlflow_fails_before_anything_is_registered(rt, spark, transformed, stack):
    repo, _ = transformed
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    name = "kronodroid_autoencoder_unreachable"
    from dfp_core.stack import free_port

    elsewhere = dataclasses.replace(rt.settings, mlflow=dataclasses.replace(
        rt.settings.mlflow, tracking_uri=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TrackingError, match="unreachable"):
        train(Runtime(elsewhere, spark=spark), _config(repo, "main", model_name=name))
    assert client.search_model_versions(f"name = '{name}'") == []
    # Invariant over the whole registry: no version exists without its lineage tags.
    for version in client.search_model_versions():
        assert set(lineage.LINEAGE_TAGS) <= set(version.tags), (version.name, version.version)


def test_a_run_that_cannot_finish_is_failed_with_one_line_and_no_version(rt, spark, transformed, stack, monkeypatch):
    import requests

    from dfp_core.ml import pyfunc
    from dfp_core.ml.train_kronodroid_autoencoder import TrainingFailed

    repo, _ = transformed
    name = "kronodroid_autoencoder_cut_off"

    def artifact_store_gone(*args, **kwargs):  # what a server restart during the upload looks like
        raise requests.exceptions.ConnectionError("Connection aborted.\nRemoteDisconnected('closed')")

    monkeypatch.setattr(pyfunc, "log_scorer_model", artifact_store_gone)
    with pytest.raises(TrainingFailed) as failed:
        train(rt, _config(repo, "main", model_name=name, max_epochs=1))
    message = str(failed.value)
    assert "\n" not in message and "no model version registered" in message and "ConnectionError" in message
    summary = failed.value.summary
    assert summary["status"] == "FAILED" and summary["model_version"] is None
    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    assert client.get_run(summary["run_id"]).info.status == "FAILED"
    assert client.search_model_versions(f"name = '{name}'") == []


def test_dfp_train_ends_with_a_json_line_when_it_fails(transformed, stack):
    import json
    import os
    import subprocess
    import sys

    from dfp_core.stack import free_port

    repo, _ = transformed
    result = subprocess.run(
        [sys.executable, "-m", "dfp_app.cli", "train", "--repo", repo, "--ref", "main",
         "--tracking-uri", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 2
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["status"] == "FAILED" and "unreachable" in last["error"]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr


def test_feast_apply_registers_the_views_at_a_commit(transformed, stack, tmp_path):
    """`dfp feast apply`, run with only DFP_HOME set, with the repo's offline store type."""
    import subprocess
    import sys

    import yaml

    from tests.inputs import only_dfp_home
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    from dfp_feast import FEAST_CONFIG_FILE, FEAST_REPO_DIR
    from dfp_feast.kronodroid_features import source_table

    repo, summary = transformed
    config = yaml.safe_load(FEAST_CONFIG_FILE.read_text())
    config["registry"]["path"] = str(tmp_path / "registry.db")  # keep the checkout clean
    config["online_store"]["path"] = str(tmp_path / "online_store.db")
    config_file = tmp_path / "feature_store.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = only_dfp_home(stack)
    done = subprocess.run([sys.executable, "-m", "dfp_app.cli", "feast", "apply", "--repo", repo,
                           "--ref", summary["merge_commit"], "--config", str(config_file)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    store = FeatureStore(config=load_repo_config(FEAST_REPO_DIR, config_file))
    assert type(store._get_provider().offline_store).__name__ == "SingleScanSparkOfflineStore"
    views = {view.name: view for view in store.list_feature_views()}
    assert set(views) == {"kronodroid_autoencoder_features", "kronodroid_sample_labels"}
    assert len(views["kronodroid_autoencoder_features"].features) == len(schema.FEATURE_COLUMNS)
    source = views["kronodroid_autoencoder_features"].batch_source
    assert source.tags["lakefs_ref"] == summary["merge_commit"]
    assert source.path == source_table(repo, summary["merge_commit"])


def test_ddp_on_two_cpu_processes_registers_one_model_with_the_same_lineage(rt, spark, transformed, stack, tmp_path):
    """`dfp train --strategy ddp --devices 2 --accelerator cpu`: Lightning's launcher starts a second
    process (gloo), which fits on its shard of the same pinned splits and logs nothing; rank zero
    owns the one MLflow run and registers a version whose lineage tags are a one-process run's."""
    import json
    import os
    import subprocess
    import sys

    repo, summary = transformed
    model = "kronodroid_autoencoder_ddp_" + repo
    done = subprocess.run(
        [sys.executable, "-m", "dfp_app.cli", "train", "--repo", repo, "--max-epochs", "2", "--hidden-dims", "32,16",
         "--latent-dim", "4", "--batch-size", "64", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
         "--model-name", model, "--no-baselines"],
        cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Quiet: the workers Lightning starts write where rank zero's stage does, into its log.
    log = Path(result["log"]).read_text()
    workers = [json.loads(line) for line in log.splitlines() if line.startswith('{"')]
    assert [(w["rank"], w["status"], w["lakefs_commit"]) for w in workers] == [(1, "DDP_WORKER_DONE", summary["merge_commit"])]

    client = mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    run = client.get_run(result["run_id"])
    assert run.data.tags["dfp.world_size"] == "2"
    assert (run.data.params["strategy"], run.data.params["devices"]) == ("ddp", "2")
    runs = client.search_runs([result["experiment_id"]], f"tags.`data.lakefs_repository` = '{repo}' and params.strategy = 'ddp'")
    assert [r.info.run_id for r in runs] == [result["run_id"]]  # the worker started no run of its own
    ddp_version = client.get_model_version(model, result["model_version"])

    single = train(rt, _config(repo, "main", max_epochs=1, model_name=model + "_single"))
    single_version = client.get_model_version(single.model_name, single.model_version)
    assert {t: ddp_version.tags[t] for t in lineage.LINEAGE_TAGS} == {t: single_version.tags[t] for t in lineage.LINEAGE_TAGS}
    assert ddp_version.tags["data.lakefs_ref"] == summary["merge_commit"]
