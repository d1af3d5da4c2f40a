"""Pure logic shared by the job, the feature store and the trainer."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dfp_core import lineage, splits
from dfp_core.kronodroid import schema
from dfp_core.errors import ConfigError


def test_canonical_names_are_unique_snake_case_and_prefixed():
    assert len(schema.FEATURE_COLUMNS) == 288 + 1 + 166 + 7 + 14
    assert len(set(schema.FEATURE_COLUMNS)) == len(schema.FEATURE_COLUMNS)
    assert schema.canonical_name("reboot") == "sc_reboot" and schema.canonical_name("REBOOT") == "perm_reboot"
    assert schema.canonical_name("SYS_369") == "sc_sys_369"
    assert schema.canonical_name("CFileSize") == "c_file_size"
    assert schema.canonical_name("NrIntServicesActions") == "nr_int_services_actions"
    assert all(c == c.lower() and " " not in c for c in schema.FEATURE_COLUMNS)
    assert not set(schema.LABEL_LEAKS) & set(schema.RAW_FEATURES)


def test_required_columns_exclude_the_optional_feature():
    assert "FilesInsideAPK" not in schema.REQUIRED_RAW
    assert {"Malware", "sha256", "execve", "INTERNET", "NrServices"} <= set(schema.REQUIRED_RAW)


@pytest.mark.parametrize(
    "path, source, label",
    [
        ("emulator/emu_legitimate_v1.zip", "emulator", 0),
        ("x/real_malware_v1.zip", "real_device", 1),
        ("real_device/kronodroid_real_device_2019_subset.csv", "real_device", None),
        ("emulator/my_dump.csv", "emulator", None),
    ],
)
def test_inputs_are_classified(path, source, label):
    spec = schema.classify_input(PurePosixPath(path))
    assert (spec.data_source, spec.expected_label) == (source, label)


@pytest.mark.parametrize("path", ["data/kronodroid.zip", "emulator/notes.txt", "misc/samples.csv"])
def test_unknown_inputs_are_not_classified(path):
    assert schema.classify_input(PurePosixPath(path)) is None


def test_sample_id_is_source_qualified_and_normalised():
    assert splits.sample_id(" ABC ", "emulator") == "emulator:abc"
    assert splits.sample_id("abc", "emulator") != splits.sample_id("abc", "real_device")


def test_the_arrow_sample_id_is_the_same_definition():
    import pyarrow as pa

    shas, sources = [" ABC ", "def", "0A\t"], ["emulator", "real_device", "emulator"]
    got = splits.arrow_sample_id(pa.array(shas), pa.array(sources)).to_pylist()
    assert got == [splits.sample_id(h, s) for h, s in zip(shas, sources)]


def test_random_split_is_deterministic_and_follows_ratios():
    spec = splits.SplitSpec(seed=7, train_ratio=0.6, val_ratio=0.2, test_ratio=0.2)
    ids = [f"real_device:{i:064x}" for i in range(20000)]
    first = [splits.assign_split(i, spec) for i in ids]
    assert first == [splits.assign_split(i, spec) for i in ids]
    counts = Counter(first)
    assert abs(counts["train"] / 20000 - 0.6) < 0.02 and abs(counts["val"] / 20000 - 0.2) < 0.02
    other_seed = [splits.assign_split(i, splits.SplitSpec(seed=8, train_ratio=0.6, val_ratio=0.2, test_ratio=0.2)) for i in ids]
    assert first != other_seed


def test_time_split_by_year():
    spec = splits.SplitSpec(mode="time", train_end_year=2015, val_end_year=2016)
    assert [splits.assign_split("x", spec, y) for y in (2014, 2015, 2016, 2017, None)] == [
        "train", "train", "val", "test", splits.UNDATED]


def test_time_split_by_month():
    """Cut-offs at a month's end; a cut-off without a month is its year's end, and a year
    split's spec (and so its dataset ids) is what it was before months existed."""
    spec = splits.SplitSpec(mode="time", train_end_year=2019, train_end_month=8, val_end_year=2019, val_end_month=9)
    dated = [(2018, 12), (2019, 1), (2019, 8), (2019, 9), (2019, 10), (2020, 1), (None, None)]
    assert [splits.assign_split("x", spec, y, m) for y, m in dated] == [
        "train", "train", "train", "val", "test", "test", splits.UNDATED]
    assert spec.to_dict() == {"mode": "time", "train_end_year": 2019, "train_end_month": 8, "val_end_year": 2019,
                              "val_end_month": 9}
    to_year_end = splits.SplitSpec(mode="time", train_end_year=2019, train_end_month=6, val_end_year=2019)
    assert [splits.assign_split("x", to_year_end, 2019, m) for m in (6, 7, 12)] == ["train", "val", "val"]
    years = splits.SplitSpec(mode="time", train_end_year=2015, val_end_year=2016)
    assert years.to_dict() == {"mode": "time", "train_end_year": 2015, "val_end_year": 2016}
    assert "month(" not in splits.spark_split_sql(years) and "month(sample_date)" in splits.spark_split_sql(spec)
    with pytest.raises(ValueError, match="month"):
        splits.assign_split("x", spec, 2019)


@pytest.mark.parametrize(
    "kwargs", [dict(train_ratio=0.8, val_ratio=0.3, test_ratio=0.1), dict(mode="time"), dict(mode="weekly"),
               dict(mode="time", train_end_year=2019, train_end_month=13, val_end_year=2019),
               dict(mode="time", train_end_year=2019, train_end_month=9, val_end_year=2019, val_end_month=8)]
)
def test_invalid_split_specs_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        splits.SplitSpec(**kwargs)


def test_dataset_ids_change_with_every_part_of_the_spec():
    base = lineage.DatasetSpec("repo", "c" * 64, "kronodroid.fct_training_dataset", "123", "view", "d" * 64,
                               splits.SplitSpec().to_dict(), 0)
    ids = {lineage.dataset_id(base, s) for s in ("train", "val", "test")}
    assert len(ids) == 3
    for change in (dict(lakefs_commit="e" * 64), dict(iceberg_snapshot_id="124"), dict(feast_defs_sha256="f" * 64),
                   dict(max_rows_per_split=10), dict(split_spec=splits.SplitSpec(seed=1).to_dict())):
        changed = lineage.DatasetSpec(**{**base.__dict__, **change})
        assert lineage.dataset_id(changed, "train") != lineage.dataset_id(base, "train")
    assert lineage.dataset_id(base, "train") == lineage.dataset_id(lineage.DatasetSpec(**base.__dict__), "train")


def test_content_hash_ignores_row_order_but_not_values():
    frame = pd.DataFrame({"sample_id": ["b", "a", "c"], "x": [1, 2, 3]})
    shuffled = frame.sample(frac=1, random_state=3)
    assert lineage.content_sha256(frame) == lineage.content_sha256(shuffled)
    changed = frame.assign(x=[1, 2, 4])
    assert lineage.content_sha256(frame) != lineage.content_sha256(changed)


def test_content_hash_values_are_stable():
    """Recorded in MLflow tags and compared by `dfp reproduce`: these values must never change."""
    frame = pd.DataFrame({"sample_id": ["b", "a", "c"], "x": [1, 2, 3], "label": [0, 1, 0], "y": [0.5, None, 2.0]})
    assert lineage.content_sha256(frame) == "40ae4fb2473787017071cb5974b22d5c8799a1e3027be9cc3cf96fc204f21608"
    subset = "e1a704fb6993ca5bb35c8c9a371d67c12f1999cb8a589228c1340284c00b1ea4"
    assert lineage.content_sha256(frame[["sample_id", "x", "label"]]) == subset
    assert lineage.content_sha256(frame, columns=["label", "sample_id", "x"]) == subset
    assert lineage.content_sha256(frame.sort_values("sample_id"), columns=["x", "sample_id", "label"]) == subset


def test_content_hash_of_rows_hashed_in_slices_equals_the_whole_frames(monkeypatch):
    """Large splits are hashed a slice of rows at a time; the digest is that of all rows at once,
    for frames of one block or of one block per column (how retrieval hands splits over)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"sample_id": [f"s{i:03d}" for i in range(10)], "x": rng.integers(0, 9, 10),
                          "label": [0, 1] * 5, "y": rng.random(10)})
    columns = sorted(frame.columns)
    whole = hashlib.sha256(",".join(columns).encode())
    whole.update(pd.util.hash_pandas_object(frame[columns], index=False).to_numpy().tobytes())
    split_blocks = pa.Table.from_pandas(frame).to_pandas(split_blocks=True)
    for chunk in (3, 10, 50_000):
        monkeypatch.setattr(lineage, "_HASH_CHUNK_ROWS", chunk)
        assert lineage.content_sha256(frame) == whole.hexdigest()
        assert lineage.content_sha256(split_blocks) == whole.hexdigest()


def test_defs_hash_covers_the_feature_definition_files(tmp_path):
    for rel in lineage.FEATURE_DEFINITION_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    before = lineage.defs_sha256(root=tmp_path)
    (tmp_path / lineage.FEATURE_DEFINITION_FILES[0]).write_text("x = 2\n")
    assert lineage.defs_sha256(root=tmp_path) != before
    assert len(lineage.LINEAGE_TAGS) == 9 and len(set(lineage.LINEAGE_TAGS)) == 9


@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 0),  # Lightning's launcher, the parent
    ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 1),  # ... and the process it started
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),                    # first process of a second node
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, 0),     # torchrun / PyTorchJob master
    ({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, 3),
])
def test_the_process_rank_comes_from_what_the_launcher_set(env, rank):
    from dfp_core.settings import ProcessSettings

    process = ProcessSettings.from_env(env)
    assert process.rank == rank and process.is_rank_zero == (rank == 0)


def test_a_rank_that_is_not_a_number_is_a_config_error():
    from dfp_core.settings import ProcessSettings

    with pytest.raises(ConfigError, match="LOCAL_RANK must be an integer"):
        ProcessSettings.from_env({"LOCAL_RANK": "one"})


@pytest.mark.parametrize("target_fpr, words", [(0.0, "above 0 and below 0.5, got 0.0"), (0.5, "above 0 and below 0.5"),
                                               (-0.01, ">= 0.0, got -0.01"), (0.7, "<= 0.5, got 0.7")])
def test_a_target_fpr_outside_0_to_half_is_refused(target_fpr, words):
    from dfp_core.params import TrainConfig

    with pytest.raises(ConfigError, match=f"--target-fpr must be {words}"):
        TrainConfig(target_fpr=target_fpr)
    assert TrainConfig(target_fpr=0.01).target_fpr == 0.01


def test_a_message_lists_ten_names_then_how_many_in_all():
    from dfp_core.errors import listed

    assert listed([]) == ""
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"f{i}" for i in range(10)]) == ", ".join(f"f{i}" for i in range(10))
    assert listed([f"f{i}" for i in range(12)]) == ", ".join(f"f{i}" for i in range(10)) + " ... (12 in all)"
    assert listed(["a", "b", "c"], shown=2) == "a, b ... (3 in all)"
