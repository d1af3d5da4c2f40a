"""`dfp drift`'s measures (dfp_core.ml.feature_drift): the profile, PSI, KS, the summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfp_core.errors import ConfigError, DatasetError
from dfp_core.kronodroid.schema import FEATURE_GROUPS
from dfp_core.ml import feature_drift as fd
from dfp_core.params import check_psi_bound

FEATURES = ("syscall_read", "syscall_write", "perm_internet", "c_file_size")


def _apps(n: int, seed: int, read_shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "syscall_read": np.where(rng.random(n) < 0.3, 0.0, np.floor(rng.lognormal(3.0, 1.0, n))) + read_shift,
        "syscall_write": np.floor(rng.lognormal(2.0, 1.0, n)),
        "perm_internet": (rng.random(n) < 0.8).astype(float),
        "c_file_size": np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(15.0, 1.0, n)),
    })


def _features() -> tuple[str, ...]:
    """Four real feature names (the groups are looked up by name)."""
    groups = {g: [f for f in fs] for g, fs in FEATURE_GROUPS.items()}
    return groups["syscalls"][0], groups["syscalls"][1], groups["permissions"][0], groups["metadata"][0]


def _named(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_axis(list(_features()), axis=1)


def test_bins_are_right_closed_and_the_last_holds_everything_above():
    assert fd.bin_counts(np.array([-1.0, 0.0, 3.0, 5.0, 6.0]), [0.0, 5.0]).tolist() == [2, 2, 1]
    assert fd.bin_counts(np.array([]), [0.0]).tolist() == [0, 0]


def test_the_profile_keeps_decile_edges_counts_missing_and_means():
    train = _named(_apps(2000, seed=1))
    profile = fd.training_profile(train, list(train.columns))
    assert profile["rows"] == 2000 and profile["version"] == fd.PROFILE_VERSION
    for feature in train.columns:
        entry = profile["features"][feature]
        values = train[feature].dropna().to_numpy()
        assert entry["edges"] == sorted(set(entry["edges"])) and len(entry["edges"]) <= 9
        assert len(entry["counts"]) == len(entry["edges"]) + 1 and sum(entry["counts"]) == len(values)
        assert entry["missing"] == train[feature].isna().sum()
        assert entry["mean"] == pytest.approx(values.mean())
    # A 0/1 feature has at most two edges (its deciles repeat); a mostly-zero count keeps 0 as one.
    assert len(profile["features"][train.columns[2]]["edges"]) <= 2
    assert profile["features"][train.columns[0]]["edges"][0] == 0.0
    with pytest.raises(DatasetError, match="lacks feature column"):
        fd.training_profile(train.drop(columns=[train.columns[3]]), list(train.columns))
    with pytest.raises(DatasetError, match="empty train split"):
        fd.training_profile(train.iloc[:0], list(train.columns))


def _summary(train: pd.DataFrame, batch: pd.DataFrame, scores=None, bound: float = 0.25) -> dict:
    profile = fd.training_profile(train, list(train.columns))
    counts = fd.BatchCounts(profile)
    for start in range(0, len(batch), 700):  # block by block, as the command counts
        counts.add(batch.iloc[start:start + 700])
    scores = np.linspace(0.0, 1.0, len(batch)) if scores is None else scores
    return fd.compare(profile, counts, scores, np.linspace(0.0, 1.0, 500), threshold=0.9, target_fpr=0.05,
                      psi_bound=bound, top=3)


def test_the_training_split_itself_has_no_shift():
    train = _named(_apps(3000, seed=2))
    summary = _summary(train, train)
    assert all(s["psi"] == 0.0 and s["ks"] == 0.0 for s in summary["top_features"])
    assert summary["features_shifted"] == 0 and not summary["drift"] and summary["rows"] == 3000
    assert summary["verdict"].startswith("0 of 4 features shifted beyond PSI 0.25;")


def test_a_fresh_sample_of_the_same_apps_stays_under_the_bound():
    summary = _summary(_named(_apps(3000, seed=3)), _named(_apps(3000, seed=4)))
    assert not summary["drift"]
    assert max(s["psi"] for s in summary["top_features"]) < 0.05
    assert summary["psi_noise_floor"] == pytest.approx((9 + 2 - 1) * (1 / 3000 + 1 / 3000), abs=1e-6)


def test_a_shifted_feature_is_ranked_first_with_its_group():
    train = _named(_apps(3000, seed=5))
    batch = _named(_apps(1500, seed=6, read_shift=40.0))
    summary = _summary(train, batch)
    first = summary["top_features"][0]
    assert first["feature"] == _features()[0] and first["group"] == "syscalls"
    assert first["psi"] > 1.0 and first["ks"] > 0.5
    assert first["input_mean"] == pytest.approx(batch[first["feature"]].mean())
    assert summary["features_shifted"] == 1 and summary["drift"] and summary["shifted_by_group"] == {"syscalls": 1}
    assert len(summary["top_features"]) == 3
    assert summary["verdict"].startswith("1 of 4 features shifted beyond PSI 0.25;")
    shown = list(fd.lines(summary))
    assert shown[0] == summary["verdict"] and any(first["feature"] in line for line in shown[1:])
    # A looser bound reads the same numbers differently.
    assert not _summary(train, batch, bound=first["psi"] + 1)["drift"]


def test_missing_values_count_as_their_own_bin():
    train = _named(_apps(3000, seed=7))
    batch = _named(_apps(3000, seed=8))
    size = _features()[3]
    batch[size] = np.nan
    summary = _summary(train, batch)
    shifted = {s["feature"]: s for s in summary["top_features"]}
    assert size in shifted and shifted[size]["psi"] > 1.0 and shifted[size]["input_mean"] is None


def test_the_scores_are_measured_against_the_benign_validation_scores():
    train = _named(_apps(500, seed=9))
    scores = np.r_[np.full(32, 0.5), np.full(8, 2.0)]
    summary = _summary(train, train.iloc[:40], scores=scores)
    assert summary["flagged_share"] == pytest.approx(0.2)
    assert summary["benign_val_flagged_share"] == pytest.approx(np.mean(np.linspace(0, 1, 500) > 0.9))
    assert 0.0 < summary["score_ks"] <= 1.0 and summary["score_quantiles"]["p99"] == 2.0
    assert "20.0% of 40 apps above the threshold (benign validation 10.0%, target 5.0%)" in summary["verdict"]
    # A batch this small: the noise floor is said.
    assert any("sampling noise" in line for line in fd.lines(summary))
    with pytest.raises(DatasetError, match="no app of the input could be scored"):
        fd.score_shift([0.1], np.array([]), 0.5)


def test_a_batch_without_a_profiled_column_is_refused_by_name():
    train = _named(_apps(300, seed=10))
    counts = fd.BatchCounts(fd.training_profile(train, list(train.columns)))
    with pytest.raises(DatasetError, match=_features()[1]):
        counts.add(train.drop(columns=[_features()[1]]))


@pytest.mark.parametrize("bound", [0, -0.1])
def test_a_psi_bound_must_be_positive(bound):
    with pytest.raises(ConfigError, match=f"--psi-bound must be above 0, got {bound}"):
        check_psi_bound(bound)


def test_psi_and_ks_of_known_counts():
    assert fd.psi([10, 10], [10, 10]) == 0.0
    p = (np.array([90, 10]) + 0.5) / 101
    q = (np.array([10, 90]) + 0.5) / 101
    assert fd.psi([90, 10], [10, 90]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert fd.ks_binned([90, 10], [10, 90]) == pytest.approx(0.8)
    assert fd.ks_binned([0, 0], [1, 1]) == 0.0


@pytest.mark.parametrize("uri", ["lakefs://repo", "lakefs://repo/main/extra", "lakefs:///main", "s3://repo/main"])
def test_a_lakefs_input_names_one_repository_and_one_ref(uri):
    from dfp_core.ml.scoring import lakefs_ref

    with pytest.raises(ConfigError, match="expected lakefs://<repository>/<branch or commit>"):
        lakefs_ref(uri)
    assert lakefs_ref("lakefs://kronodroid/0a1b2c/") == ("kronodroid", "0a1b2c")
