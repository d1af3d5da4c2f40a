"""The use cases' typed summaries print as the JSON lines the commands have always printed."""

from __future__ import annotations

import json

from dfp_core.ml.drift import DriftSummary
from dfp_core.ml.evaluate_model import EvaluationSummary
from dfp_core.ml.reproduce import ReproduceReport
from dfp_core.ml.retarget import RetargetSummary
from dfp_core.ml.train_kronodroid_autoencoder import TrainSummary, WorkerSummary
from dfp_core.summary import Summary
from dfp_spark.run_refs import GcSummary


def test_every_field_is_in_the_json_line_by_its_name():
    train = TrainSummary(run_id="r1", experiment_id="1", model_name="m", model_version="3", model_alias="candidate",
                         model_uri="models:/m/3", lineage_tags={"data.lakefs_commit": "c"}, dataset_rows={"train": 7},
                         content_sha256={"train": "ab"}, test_metrics={"test_roc_auc": 0.9}, epochs_trained=2,
                         tracking_uri="http://mlflow")
    assert train.to_json() == {"run_id": "r1", "experiment_id": "1", "model_name": "m", "model_version": "3",
                               "model_alias": "candidate", "model_uri": "models:/m/3",
                               "lineage_tags": {"data.lakefs_commit": "c"}, "dataset_rows": {"train": 7},
                               "content_sha256": {"train": "ab"}, "test_metrics": {"test_roc_auc": 0.9},
                               "epochs_trained": 2, "tracking_uri": "http://mlflow"}
    assert WorkerSummary(rank=1, epochs_trained=2, lakefs_commit="c").to_json() == \
        {"rank": 1, "epochs_trained": 2, "lakefs_commit": "c", "status": "DDP_WORKER_DONE"}
    gc = GcSummary("repo", True, 0.0, [{"name": "run-a"}], [], ["run-b"], [])
    assert gc.to_json()["removed"] == [{"name": "run-a"}] and gc.to_json()["stray_leases_removed"] == ["run-b"]
    evaluation = EvaluationSummary("m", "3", "r1", "comparison", {"threshold": 1.0}, {"eval_roc_auc__pca": 0.8}, [], True)
    assert set(evaluation.to_json()) == {"model", "version", "run_id", "mode", "operating_point", "metrics", "table",
                                         "logged"}
    for summary in (train, gc, evaluation):
        assert isinstance(summary, Summary)
        json.dumps(summary.to_json())  # a JSON line, as it is


def test_figures_of_a_nested_result_print_at_the_top_as_before():
    point = {"threshold": 1.5, "target_fpr": 0.01, "val_fpr": 0.009}
    retarget = RetargetSummary("m", "3", "4", None, "r2", "grouped_error", point).to_json()
    assert retarget == {"model": "m", "from_version": "3", "version": "4", "alias": None, "run_id": "r2",
                        "score": "grouped_error", **point}
    drift = DriftSummary("m", "4", "apps.csv", "stored", 2, {"bad_row": 2},
                         {"drift": True, "rows": 40, "verdict": "1 feature shifted"})
    assert drift.drift is True
    assert drift.to_json() == {"model": "m", "version": "4", "input": "apps.csv", "training_baseline": "stored",
                               "rejected": 2, "rejected_by_reason": {"bad_row": 2}, "drift": True, "rows": 40,
                               "verdict": "1 feature shifted"}


def test_what_a_reproduction_did_not_measure_is_left_out():
    report = ReproduceReport("m", "3", True, rows={"train": 7})
    assert report.to_json() == {"model": "m", "version": "3", "matches": True, "differences": [],
                                "rows": {"train": 7}, "dataset_ids": {}}
    report.seconds_rebuild = 1.5
    assert report.to_json()["seconds_rebuild"] == 1.5


def test_a_score_names_only_its_own_kind_of_input():
    from dfp_core.ml.scoring import ScoreSummary

    common = dict(rows_in=3, scored=2, rejected=1, anomalies=1, threshold=None, target_fpr=None, flagged_share=0.5,
                  out_path="out.csv", model_uri="models:/m/1")
    files = ScoreSummary(**common, rejected_by_reason={"bad_row": 1}).to_json()
    assert files["rejected_by_reason"] == {"bad_row": 1} and "lakefs_commit" not in files
    assert files["threshold"] is None  # a version without a threshold says so
    ref = ScoreSummary(**common, lakefs_commit="c", iceberg_snapshot_id="7").to_json()
    assert ref["lakefs_commit"] == "c" and "rejected_by_reason" not in ref


def test_a_diff_of_two_refs_has_no_scores_or_report_to_name():
    from dfp_core.ml.diff import DiffSummary

    parts = dict(older={"data": "lakefs://r/a"}, newer={"data": "lakefs://r/b"}, apps={"added": {"total": 1}},
                 families={"appeared": []}, train_shift={"top_features": []}, quarantine={"older": None, "newer": None},
                 lakefs={"same_repository": True}, feature_definitions={"differ": False}, hyperparameters=None,
                 verdict="1 app added")
    refs = DiffSummary(**parts).to_json()
    assert refs == parts  # every field by its name; hyperparameters stay null (refs have none)
    versions = DiffSummary(**parts, scores={"apps": 3}, report_artifact="runs:/r/diff/1-2/report.md").to_json()
    assert versions["scores"] == {"apps": 3} and "report" not in versions


def test_a_transform_prints_its_stored_record_and_the_merge_once_there_is_one():
    from dfp_spark.transform_run import TransformSummary

    record = {"run_id": "r1", "fct_rows": 288, "snapshot_ids": {"kronodroid.fct_training_dataset": "7"}}
    unmerged = TransformSummary(record, "main", "c0").to_json()
    assert unmerged == {**record, "target_branch": "main", "base_commit": "c0"}  # no merge fields yet
    merged = TransformSummary(record, "main", "c0", merge_commit="m1", run_commit="r9", run_tag="run-r1").to_json()
    assert merged == {**record, "target_branch": "main", "base_commit": "c0", "merge_commit": "m1",
                      "run_commit": "r9", "run_tag": "run-r1"}
