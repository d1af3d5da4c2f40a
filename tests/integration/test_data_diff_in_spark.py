"""`dfp diff`'s comparisons in Spark (dfp_core.ml.data_diff) on small frames of known changes: apps
matched by sample_id, families, the train shift, and the profile from Spark's value counts equal
to the one training writes from pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfp_core.errors import DatasetError
from dfp_core.kronodroid.schema import FEATURE_GROUPS
from dfp_core.ml import data_diff as dd
from dfp_core.ml.feature_drift import profile_from_value_counts, training_profile

READ, PERM = FEATURE_GROUPS["syscalls"][0], FEATURE_GROUPS["permissions"][0]


def _frames(ids: list[str], labels: list[int], splits: list[str], families: list[str] | None = None,
            seed: int = 0, read_scale: float = 1.0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "sample_id": ids, "label": labels, "split": splits,
        "malware_family": families or ["" if l == 0 else "Airpush" for l in labels],
        READ: np.floor(rng.lognormal(3.0, 1.0, len(ids))) * read_scale,
        PERM: (rng.random(len(ids)) < 0.7).astype(float),
    })
    return {s: table[table["split"] == s].drop(columns="split").reset_index(drop=True) for s in dd.SPLITS}


def _rows(spark, frames: dict[str, pd.DataFrame]):
    """The frames as one Spark frame with a ``dataset_split`` column, as ``Runtime.split_rows`` gives them."""
    table = pd.concat([f.assign(dataset_split=s) for s, f in frames.items()], ignore_index=True)
    return spark.createDataFrame(table)


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"app{i:04d}" for i in range(start, start + n)]


def test_known_changes_are_counted_exactly(spark):
    n = 300
    splits = (["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    labels = [i % 3 == 0 for i in range(n)]
    older = _frames(_ids(n), [int(l) for l in labels], splits, seed=1)
    # Newer: the first 20 apps removed, 30 new ones (10 malware) in train, apps 100-104 flipped
    # to the other label, apps 200-206 moved from val to test.
    new_labels = [int(l) for l in labels][20:] + [1] * 10 + [0] * 20
    for i in range(100 - 20, 105 - 20):
        new_labels[i] = 1 - new_labels[i]
    new_splits = splits[20:] + ["train"] * 30
    for i in range(200 - 20, 207 - 20):
        new_splits[i] = "test"
    families = ["" if l == 0 else ("Joker" if i >= n - 20 else "Airpush") for i, l in enumerate(new_labels)]
    newer = _frames(_ids(n - 20, 20) + _ids(30, 1000), new_labels, new_splits, families, seed=1)
    summary = dd.compare(_rows(spark, older), _rows(spark, newer), [READ, PERM])
    apps = summary["apps"]
    assert apps["removed"]["total"] == 20 and apps["removed"]["by_split"] == {"train": 20, "val": 0, "test": 0}
    assert apps["removed"]["by_label"] == {"benign": 13, "malware": 7}
    assert apps["added"]["total"] == 30 and apps["added"]["by_label"] == {"benign": 20, "malware": 10}
    assert apps["added"]["by_split"] == {"train": 30, "val": 0, "test": 0}
    assert apps["kept"]["total"] == 280 and apps["rows"] == {"older": 300, "newer": 310}
    assert apps["label_changed"]["total"] == 5 and apps["label_changed"]["examples"] == _ids(5, 100)
    assert sum(apps["label_changed"]["by_change"].values()) == 5
    assert apps["moved"] == {"total": 7, "by_move": {"val->test": 7}, "examples": _ids(5, 200)}
    assert {k: summary["families"][k] for k in ("appeared", "disappeared")} == {"appeared": ["Joker"], "disappeared": []}
    assert summary["families"]["counts"]["Joker"] == [0, sum(f == "Joker" for f in families)]
    assert list(summary["families"]["counts"])[0] == "Airpush"
    assert summary["apps"]["by_split_and_label"]["older"]["train"] == {"benign": 133, "malware": 67}
    assert "20 removed, 280 kept (5 changed label, 7 moved split)" in dd.verdict({**summary})


def test_the_train_split_shift_ranks_the_changed_feature_first(spark):
    ids, labels, splits = _ids(2000), [0] * 2000, ["train"] * 1400 + ["val"] * 300 + ["test"] * 300
    def train(**kw):
        return spark.createDataFrame(_frames(ids, labels, splits, **kw)["train"])

    same = dd.train_shift(train(seed=2), train(seed=3), [READ, PERM])
    assert same["features_shifted"] == 0 and same["features"] == 2
    moved = dd.train_shift(train(seed=2), train(seed=3, read_scale=100.0), [READ, PERM])
    assert moved["features_shifted"] == 1 and moved["top_features"][0]["feature"] == READ
    assert moved["top_features"][0]["group"] == "syscalls" and moved["top_features"][0]["psi"] > 1.0
    # Features one side lacks are listed, and the shift is on the shared ones.
    older = train(seed=2)
    partial = dd.train_shift(older, older.drop(PERM), [READ, PERM])
    assert partial["features"] == 1 and partial["only_in_older"] == [PERM] and partial["only_in_newer"] == []


def test_an_app_in_two_splits_or_a_missing_split_is_refused(spark):
    frames = _frames(_ids(10), [0] * 10, ["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    frames["test"] = pd.concat([frames["test"], frames["train"].iloc[:1]], ignore_index=True)
    with pytest.raises(DatasetError, match="sample_id app0000 is in the splits more than once"):
        dd.apps(_rows(spark, frames))
    with pytest.raises(DatasetError, match="the data has no val split"):
        dd.apps(_rows(spark, {"train": frames["train"], "test": frames["test"]}))


def test_the_profile_from_spark_value_counts_is_the_one_training_writes(spark):
    """Deciles, bins, missing values and means of the same split: from pandas rows (what training
    stores) and from the value counts Spark hands back (what a diff computes) are the same."""
    frame = _frames(_ids(3000), [0] * 3000, ["train"] * 3000, seed=6)["train"]
    frame.loc[::7, READ] = np.nan  # missing values count apart
    frame["c_file_size"] = np.random.default_rng(6).lognormal(12, 2, len(frame))  # nearly every value distinct
    features = [READ, PERM, "c_file_size"]
    from_rows = training_profile(frame, features)
    from_spark = profile_from_value_counts(dd.value_counts(spark.createDataFrame(frame), features))
    assert from_spark["rows"] == from_rows["rows"] == 3000
    for feature in features:
        a, b = from_rows["features"][feature], from_spark["features"][feature]
        assert (a["edges"], a["counts"], a["missing"]) == (b["edges"], b["counts"], b["missing"]), feature
        assert b["mean"] == pytest.approx(a["mean"], rel=1e-12), feature
    assert from_spark["features"][READ]["missing"] == len(frame[READ]) - frame[READ].count() > 0


def test_the_report_has_the_verdict_tables_and_plots(spark, tmp_path):
    from dfp_core.ml.diff_report import write_report

    ids, splits = _ids(300), ["train"] * 200 + ["val"] * 50 + ["test"] * 50
    labels = [int(i % 4 == 0) for i in range(300)]
    newer = _frames(ids[10:] + _ids(5, 900), labels[10:] + [1] * 5, splits[10:] + ["test"] * 5, seed=5, read_scale=50)
    summary = dd.compare(_rows(spark, _frames(ids, labels, splits, seed=4)), _rows(spark, newer), [READ, PERM], top=2)
    side = {"commit": "c" * 64, "iceberg_snapshot_id": "123", "rows": {"train": 1, "val": 1, "test": 1}}
    summary.update(older={"data": "version 1 of m", **side}, newer={"data": "version 2 of m", **side},
                   quarantine={"older": {"negative_count": 2}, "newer": None},
                   lakefs={"same_repository": True, "commits": [{"id": "d" * 64, "run_id": "r2", "message": "Merge run r2"}],
                           "raw_changes": [{"path": "raw/kronodroid/a.zip", "type": "changed"}]},
                   feature_definitions={"older": "x", "newer": "x", "differ": False}, hyperparameters={"lr": ["0.001", "0.002"]},
                   scores={"apps": 3, "older": {"threshold": 1.0, "flagged_share": 0.5, "p50": 0.5, "p90": 1.5, "p99": 2.0},
                           "newer": {"threshold": 1.2, "flagged_share": 0.2, "p50": 0.4, "p90": 1.0, "p99": 1.9}})
    summary["verdict"] = dd.verdict(summary)
    scores = {"version 1": np.array([0.2, 0.5, 2.0]), "version 2": np.array([0.1, 0.4, 1.9])}
    report = write_report(summary, tmp_path / "out", scores, {"version 1": 1.0, "version 2": 1.2})
    text = report.read_text()
    assert text.startswith("# Data diff: version 1 of m -> version 2 of m\n\n" + summary["verdict"])
    assert f"| {READ} | syscalls |" in text and "| negative_count | 2 | 0 |" in text
    assert "lr: 0.001 -> 0.002" in text and "| raw/kronodroid/a.zip | changed |" in text and "Merge run r2" in text
    for plot in ("apps_by_split_and_label.png", "families.png", "feature_shift.png", "scores.png"):
        assert (report.parent / plot).read_bytes()[:4] == b"\x89PNG", plot
    # Two refs: no scores section, no plot for it.
    summary.pop("scores")
    ref_report = write_report(summary, tmp_path / "refs")
    assert "Scores on the same test apps" not in ref_report.read_text() and not (tmp_path / "refs" / "scores.png").exists()


@pytest.mark.parametrize("max_rows", [0, 7])
def test_split_rows_are_the_rows_load_splits_serves(rt, transform, repo, small_input, max_rows):
    """``Runtime.split_rows`` (what a diff and a drift read) against ``load_splits`` of the same
    ref: the same apps in each split, the same counts and dataset ids, with and without a
    ``max_rows_per_split`` subset (the ranking in Spark, the counts from the entity index)."""
    transform(input_dir=small_input, repo=repo, run_id="pinned")
    served = rt.retrieve_splits(repo, "main", max_rows_per_split=max_rows)
    pinned = rt.split_rows(repo, "main", max_rows_per_split=max_rows)
    assert pinned.spec == served.spec and pinned.dataset_ids == served.dataset_ids
    assert pinned.counts == served.rows
    if max_rows:
        assert set(pinned.counts.values()) == {max_rows}
    ids = pinned.rows.select("sample_id", "dataset_split").toPandas()
    for split, frame in served.frames.items():
        assert sorted(ids.loc[ids["dataset_split"] == split, "sample_id"]) == sorted(frame["sample_id"]), split
