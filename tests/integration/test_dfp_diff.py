"""`dfp diff` on known changes between two transforms of one repository: apps removed and added,
labels flipped, one syscall's counts 100 times higher. The counts, the families and the top
feature must be exactly those; the same data compared as two refs and as two registered
versions (whose hyperparameters differ) gives the same answer. And on the real subset (when
present): a random and a month split of the same apps differ only in where the apps are."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from dfp_core import iceberg, lineage
from dfp_core.errors import DatasetError, TrackingError
from dfp_core.iceberg import TableRef
from dfp_core.kronodroid import schema
from dfp_core.kronodroid.generator import SUBSET_RELPATH, generate
from dfp_core.kronodroid.schema import RAW_TO_CANONICAL, REAL_DEVICE
from dfp_core.ml.diff import diff
from dfp_core.ml.drift import drift
from dfp_core.ml.train_kronodroid_autoencoder import train
from dfp_core.params import TrainConfig
from dfp_core.splits import SplitSpec, assign_split, sample_id

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
REMOVED, ADDED, FLIPPED = 15, 25, 6


def _subset(folder: Path, rows: int, seed: int) -> pd.DataFrame:
    generate(folder, rows, seed=seed, layout="subset")
    return pd.read_csv(folder / SUBSET_RELPATH, dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, folder: Path) -> Path:
    (folder / SUBSET_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / SUBSET_RELPATH, index=False)
    return folder


def _split(sha: str) -> str:
    return assign_split(sample_id(sha, REAL_DEVICE), SplitSpec())


def _families(frame: pd.DataFrame) -> set[str]:
    return set(frame.loc[(frame["Malware"] == "1") & (frame["MalFamily"] != ""), "MalFamily"])


def test_dfp_diff_finds_exactly_the_changes_made(rt, transform, tmp_path):
    older = _subset(tmp_path / "a", 400, seed=61)
    # Only apps whose sha256 occurs once, so that no duplicate handling blurs the counts.
    unique = older[~older["sha256"].duplicated(keep=False)]
    removed = unique.iloc[:REMOVED]
    flipped = unique.iloc[REMOVED:REMOVED + FLIPPED]
    extra = _subset(tmp_path / "c", 200, seed=62)
    extra = extra[~extra["sha256"].duplicated(keep=False) & ~extra["sha256"].isin(older["sha256"])].iloc[:ADDED]
    newer = older[~older["sha256"].isin(removed["sha256"])].copy()
    newer.loc[newer["sha256"].isin(flipped["sha256"]), "Malware"] = \
        newer.loc[newer["sha256"].isin(flipped["sha256"]), "Malware"].map({"0": "1", "1": "0"})
    newer = pd.concat([newer, extra], ignore_index=True)
    newer["read"] = (newer["read"].astype(int) * 100).astype(str)

    repo = "diff" + uuid.uuid4().hex[:8]
    first = transform(input_dir=_write(older, tmp_path / "older"), repo=repo, run_id="diff-a")
    second = transform(input_dir=_write(newer, tmp_path / "newer"), repo=repo, run_id="diff-b")
    refs = (f"lakefs://{repo}/{first['merge_commit']}", f"lakefs://{repo}/{second['merge_commit']}")
    summary = diff(rt, refs=refs)

    apps = summary.apps
    assert apps["removed"]["total"] == REMOVED and apps["added"]["total"] == ADDED
    assert apps["label_changed"]["total"] == FLIPPED and apps["moved"]["total"] == 0
    for kind, rows in (("removed", removed), ("added", extra)):
        assert apps[kind]["by_split"] == {s: sum(_split(h) == s for h in rows["sha256"]) for s in ("train", "val", "test")}
        assert apps[kind]["by_label"] == {"benign": int((rows["Malware"] == "0").sum()),
                                          "malware": int((rows["Malware"] == "1").sum())}
    assert set(apps["label_changed"]["examples"]) <= {sample_id(h, REAL_DEVICE) for h in flipped["sha256"]}
    assert {k: summary.families[k] for k in ("appeared", "disappeared")} == {
        "appeared": sorted(_families(newer) - _families(older)), "disappeared": sorted(_families(older) - _families(newer))}
    shift = summary.train_shift
    assert shift["top_features"][0]["feature"] == RAW_TO_CANONICAL["read"] and shift["top_features"][0]["psi"] > 1.0
    assert shift["only_in_older"] == [] == shift["only_in_newer"]
    # lakeFS: the second run's commits, and the raw file it replaced.
    lakefs_part = summary.lakefs
    assert lakefs_part["same_repository"] and lakefs_part["commits"][0]["id"] == second["merge_commit"]
    assert "diff-b" in {c["run_id"] for c in lakefs_part["commits"]}
    assert first["merge_commit"] not in {c["id"] for c in lakefs_part["commits"]} and not lakefs_part["truncated"]
    assert any(c["path"].endswith(Path(SUBSET_RELPATH).name) and c["type"] == "changed" for c in lakefs_part["raw_changes"])
    assert summary.quarantine["older"] == first["quarantine_by_reason"]
    assert summary.quarantine["newer"] == second["quarantine_by_reason"]
    assert not summary.feature_definitions["differ"] and summary.hyperparameters is None
    assert summary.verdict.startswith(f"{ADDED} apps added, {REMOVED} removed")

    # The same data behind two registered versions, trained with different learning rates.
    name = f"kronodroid_autoencoder_{repo}"
    small = dict(repo=repo, max_epochs=1, batch_size=64, hidden_dims=(32, 16), latent_dim=4, seed=3, accelerator="cpu",
                 devices="1", model_name=name, evaluate_baselines=False)
    a = train(rt, TrainConfig(ref=first["merge_commit"], lr=1e-3, **small)).model_version
    b = train(rt, TrainConfig(ref=second["merge_commit"], lr=2e-3, **small)).model_version
    # The newer one named by its alias: training set "candidate" on b.
    done = subprocess.run([str(VENV_BIN / "dfp"), "diff", "--model", name, "--versions", str(a), "@candidate", "--top",
                           "3", "--out", str(tmp_path / "report")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    assert versions["apps"] == apps and versions["families"] == summary.families
    assert len(versions["train_shift"]["top_features"]) == 3
    assert versions["hyperparameters"]["lr"] == ["0.001", "0.002"] and "ref" in versions["hyperparameters"]
    assert versions["older"]["data"] == f"version {a} of {name}" and versions["verdict"] in done.stderr
    assert versions["newer"]["data"] == f"version {b} of {name}"
    # Both versions scored the newer one's test apps, each against its own threshold.
    scores = versions["scores"]
    assert scores["apps"] == versions["newer"]["rows"]["test"]
    for side, version in (("older", a), ("newer", b)):
        run = rt.mlflow.get_run(rt.mlflow.get_model_version(name, str(version)).run_id)
        assert scores[side]["threshold"] == pytest.approx(run.data.metrics["threshold"])
        assert 0.0 <= scores[side]["flagged_share"] <= 1.0 and scores[side]["p50"] <= scores[side]["p99"]
    # The report for a person: written where --out says and logged on the newer version's run.
    report = Path(versions["report"])
    text = report.read_text()
    assert versions["verdict"] in text and RAW_TO_CANONICAL["read"] in text and "lr: 0.001 -> 0.002" in text
    for plot in ("apps_by_split_and_label.png", "families.png", "feature_shift.png", "scores.png"):
        assert f"]({plot})" in text and (report.parent / plot).read_bytes()[:4] == b"\x89PNG", plot
    newer_run = rt.mlflow.get_model_version(name, str(b)).run_id
    assert versions["report_artifact"] == f"runs:/{newer_run}/diff/{a}-{b}/report.md"
    logged = {f.path for f in rt.mlflow.list_artifacts(newer_run, f"diff/{a}-{b}")}
    assert {f"diff/{a}-{b}/report.md", f"diff/{a}-{b}/scores.png"} <= logged
    # `dfp drift` reads a lakefs:// input as Feast serves it: the newer version's own data shows no
    # shift against its training, the older data (read counts 100 times lower) does.
    own = drift(rt, name, None, "candidate", refs[1])
    assert own.version == str(b)
    assert own.comparison["rows"] == sum(versions["newer"]["rows"].values()) and own.rejected == 0
    assert own.comparison["features_shifted"] == 0 and not own.drift
    before = drift(rt, name, str(b), None, refs[0])
    assert before.drift and before.comparison["top_features"][0]["feature"] == RAW_TO_CANONICAL["read"]
    # A version that does not exist is named.
    done = subprocess.run([str(VENV_BIN / "dfp"), "diff", "--model", name, "--versions", str(a), "99"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "99" in json.loads(done.stdout.strip().splitlines()[-1])["error"]


def test_what_a_diff_cannot_compare_is_refused_in_one_line_and_other_definitions_are_compared_on_the_shared_features(
        rt, spark, lakefs, transform, tmp_path):
    repo = "diffbad" + uuid.uuid4().hex[:6]
    commit = transform(input_dir=_write(_subset(tmp_path / "a", 300, seed=71), tmp_path / "in"), repo=repo,
                       run_id="bad-a")["merge_commit"]
    # A snapshot written without one feature, as a table of other feature definitions would be.
    lakefs.create_branch(repo, "narrow", commit)
    written = TableRef(repo, commit, schema.MART_NAMESPACE, schema.FCT_TABLE)
    dropped = RAW_TO_CANONICAL["read"]
    iceberg.write_table(spark, lakefs, spark.table(iceberg.qualified(spark, written)).drop(dropped),
                        TableRef(repo, "narrow", schema.MART_NAMESPACE, schema.FCT_TABLE),
                        {k: v for k, v in iceberg.table_properties(spark, written).items() if k.startswith("dfp.")})
    narrow = lakefs.commit(repo, "narrow", "the fct table without one feature")
    summary = diff(rt, refs=(f"lakefs://{repo}/{commit}", f"lakefs://{repo}/{narrow}"))
    shift = summary.train_shift
    assert shift["only_in_older"] == [dropped] and shift["only_in_newer"] == []
    assert shift["features"] == len(schema.FEATURE_COLUMNS) - 1 == summary.feature_definitions["shared_features"]
    assert shift["features_shifted"] == 0 and summary.apps["added"]["total"] == 0 == summary.apps["removed"]["total"]
    assert f"only in older: {dropped}; only in newer: none" in summary.verdict

    # Versions: one trained, the others registered from its files with their tags changed.
    name = f"kronodroid_autoencoder_{repo}"
    v1 = train(rt, TrainConfig(repo=repo, ref=commit, max_epochs=1, batch_size=64, hidden_dims=(32, 16), latent_dim=4,
                               seed=3, accelerator="cpu", devices="1", model_name=name,
                               evaluate_baselines=False)).model_version
    trained = rt.mlflow.get_model_version(name, str(v1))
    tags = dict(trained.tags)

    def registered(changed: dict[str, str], left_out: tuple[str, ...] = ()) -> str:
        import mlflow

        with rt.tracking():
            version = mlflow.register_model(trained.source, name, tags={
                k: v for k, v in {**tags, **changed}.items() if k not in left_out})
        return str(version.version)

    # Trained under other feature definitions: its dataset ids hash those definitions.
    other = dataclasses.replace(rt.split_rows(repo, commit).spec, feast_defs_sha256="0" * 64)
    other_defs = registered({lineage.TAG_DEFS_SHA: other.feast_defs_sha256,
                             **{tag: lineage.dataset_id(other, s) for s, tag in lineage.SPLIT_ID_TAGS.items()}})
    other_rows = registered({lineage.TAG_TRAIN_ID: "ds-" + "0" * 24})
    gone = registered({lineage.TAG_REF: "f" * 64})

    compared = diff(rt, model=name, versions=(str(v1), other_defs))
    assert compared.feature_definitions["differ"] and compared.apps["added"]["total"] == 0
    assert "feature definitions differ (feast.defs_sha256): the shift is on the " \
           f"{len(schema.FEATURE_COLUMNS)} shared features" in compared.verdict
    assert compared.scores["older"]["p50"] == compared.scores["newer"]["p50"]  # the same model files

    def refused(error, versions, match: str) -> None:
        out = tmp_path / f"report-{versions[1]}"
        with pytest.raises(error) as raised:
            diff(rt, model=name, versions=versions, out=out)
        assert "\n" not in str(raised.value) and not out.exists()
        assert raised.match(match)

    refused(DatasetError, (str(v1), other_rows), f"version {other_rows} of {name}: its data does not rebuild as its "
            f"tags record it: {lineage.TAG_TRAIN_ID}: tagged ds-0+, rebuilt ds-")
    refused(DatasetError, (gone, str(v1)), f"version {gone} of {name}: its data cannot be rebuilt: .*f{{12}}")
    with pytest.raises(DatasetError, match=f"lakefs://{repo}/no-such-branch: its data cannot be read: .*no-such-branch"):
        diff(rt, refs=(f"lakefs://{repo}/{commit}", f"lakefs://{repo}/no-such-branch"), out=tmp_path / "refs")
    assert not (tmp_path / "refs").exists()

    # A version without its lineage tags, deleted after: the registry holds none otherwise
    # (test_training checks that invariant over the whole registry).
    untagged = registered({}, left_out=(lineage.TAG_SNAPSHOT,))
    try:
        refused(TrackingError, (str(v1), untagged), f"version {untagged} lacks lineage tags: {lineage.TAG_SNAPSHOT}")
        # The command line: one line, the JSON error last, no report; `dfp drift` refuses it too.
        for command in (["diff", "--model", name, "--versions", str(v1), untagged, "--out", str(tmp_path / "cli")],
                        ["drift", "--model", name, "--version", untagged, "--input", f"lakefs://{repo}/{commit}"]):
            done = subprocess.run([str(VENV_BIN / "dfp"), *command], capture_output=True, text=True)
            assert done.returncode == 2, done.stderr[-2000:]
            assert "lacks lineage tags" in json.loads(done.stdout.strip().splitlines()[-1])["error"]
        assert not (tmp_path / "cli").exists()
    finally:
        rt.mlflow.delete_model_version(name, untagged)


def test_a_random_and_a_month_split_of_the_real_subset_differ_only_in_their_splits(rt, transform, spark, real_subset,
                                                                                   tmp_path):
    """The real 2019 subset transformed twice into one repository, split at random, then by month
    (train January-August, val September, test October-December): `dfp diff` finds no app added
    or removed and no label changed, and exactly the apps whose split the two definitions differ on
    moved. The Spark job's month split agrees with the Python definition row for row."""
    from dfp_core import iceberg
    from dfp_core.iceberg import TableRef
    from dfp_core.kronodroid.schema import FCT_TABLE, MART_NAMESPACE

    (tmp_path / "real_device").mkdir()
    (tmp_path / "real_device" / real_subset.name).write_bytes(real_subset.read_bytes())
    repo = "months" + uuid.uuid4().hex[:8]
    month = SplitSpec(mode="time", train_end_year=2019, train_end_month=8, val_end_year=2019, val_end_month=9)
    first = transform(input_dir=tmp_path, repo=repo, run_id="real-random")
    second = transform(input_dir=tmp_path, repo=repo, run_id="real-month", split_mode="time", train_end_year=2019,
                       train_end_month=8, val_end_year=2019, val_end_month=9)
    assert second["split_spec"] == month.to_dict()

    def splits_at(ref: str) -> pd.DataFrame:
        table = iceberg.qualified(spark, TableRef(repo, ref, MART_NAMESPACE, FCT_TABLE))
        rows = spark.table(table).select("sample_id", "sample_date", "dataset_split").collect()
        return pd.DataFrame([r.asDict() for r in rows]).set_index("sample_id")

    random_split, month_split = splits_at(first["merge_commit"]), splits_at(second["merge_commit"])
    dates = pd.to_datetime(month_split["sample_date"])
    assert (dates.dt.year == 2019).all()
    expected = [assign_split(i, month, d.year, d.month) for i, d in zip(month_split.index, dates)]
    assert month_split["dataset_split"].tolist() == expected
    assert set(dates[month_split["dataset_split"] == "test"].dt.month) <= {10, 11, 12}
    moved = int((random_split["dataset_split"] != month_split["dataset_split"].reindex(random_split.index)).sum())

    summary = diff(rt, refs=(f"lakefs://{repo}/{first['merge_commit']}", f"lakefs://{repo}/{second['merge_commit']}"))
    apps = summary.apps
    assert apps["added"]["total"] == apps["removed"]["total"] == apps["label_changed"]["total"] == 0
    assert apps["kept"]["total"] == len(random_split) == len(month_split) == first["fct_rows"]
    assert apps["moved"]["total"] == moved > 0
    assert apps["kept"]["by_split"] == {s: int((month_split["dataset_split"] == s).sum()) for s in ("train", "val", "test")}
    assert summary.verdict.startswith(f"0 apps added, 0 removed, {len(month_split)} kept (0 changed label, {moved} moved")
