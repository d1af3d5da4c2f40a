"""Unit tests of the ML core (dfp_core.ml): CPU only, synthetic data, fast.

The synthetic frames have every schema.FEATURE_COLUMNS column. Benign rows are
Poisson counts whose log-rates lie on a low-rank (3-factor) manifold; malware
rows come from a different loading matrix plus extra activity on a block of
features, so an autoencoder trained on benign rows reconstructs them worse.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
pytest.importorskip("mlflow")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score  # noqa: E402

from dfp_core.errors import DatasetError  # noqa: E402
from dfp_core.ml import metrics as M  # noqa: E402
from dfp_core.ml.data import KronodroidDataModule  # noqa: E402
from bench.plain_loop import train_plain  # noqa: E402
from dfp_core.ml.model import KronodroidAutoencoder, LossHistory  # noqa: E402
from dfp_core.ml.plots import plot_error_histogram, plot_loss_curves, plot_roc_pr  # noqa: E402
from dfp_core.serving.preprocess import Z_CLIP, Preprocessor  # noqa: E402
from dfp_core.kronodroid.schema import FEATURE_COLUMNS  # noqa: E402

FEATURES = list(FEATURE_COLUMNS)
N_FEAT = len(FEATURES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONSTANT = FEATURES[300:310]  # always 0 in the synthetic data (many permissions are)
SMALL = dict(hidden_dims=(64, 32), latent_dim=8, dropout=0.0)

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",  # Lightning: few dataloader workers, small batches, ...
    "ignore:.*does not have many workers.*",
)


def trainer(**kw) -> "L.Trainer":
    base = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    base.update(kw)
    return L.Trainer(**base)


def synthetic_frame(n_benign: int = 600, n_malware: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rank = 3
    bias = rng.uniform(-1.0, 1.5, N_FEAT)
    w_benign = rng.normal(0.0, 0.6, (rank, N_FEAT))
    w_malware = rng.normal(0.0, 0.6, (rank, N_FEAT))

    def counts(n, w, extra):
        z = rng.normal(size=(n, rank))
        rate = np.exp(np.clip(bias + z @ w + extra, None, 8.0))
        return rng.poisson(rate).astype(np.int64)

    extra = np.zeros(N_FEAT)
    extra[rng.choice(N_FEAT, 60, replace=False)] = 1.5
    x = np.vstack([counts(n_benign, w_benign, 0.0), counts(n_malware, w_malware, extra)])
    df = pd.DataFrame(x, columns=FEATURES)
    df[CONSTANT] = 0
    df["c_file_size"] = df["c_file_size"] * 100_000 + 1_000_000  # byte sizes
    files = df["files_inside_apk"].astype(float)
    files[rng.random(len(df)) < 0.2] = np.nan  # only some archives have it
    df["files_inside_apk"] = files
    df["label"] = np.r_[np.zeros(n_benign, int), np.ones(n_malware, int)]
    df["data_source"] = np.where(rng.random(len(df)) < 0.5, "emulator", "real_device")
    df["sample_id"] = [f"s{i:05d}" for i in range(len(df))]
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def data():
    df = synthetic_frame()
    n = len(df)
    splits = {"train": df.iloc[: int(0.6 * n)], "val": df.iloc[int(0.6 * n): int(0.8 * n)], "test": df.iloc[int(0.8 * n):]}
    splits = {k: v.reset_index(drop=True) for k, v in splits.items()}
    pre = Preprocessor(FEATURE_COLUMNS).fit(splits["train"])
    arrays = {k: pre.transform(v) for k, v in splits.items()}
    labels = {k: v["label"].to_numpy() for k, v in splits.items()}
    return {"frames": splits, "pre": pre, "x": arrays, "y": labels}


def make_dm(data, **kw) -> KronodroidDataModule:
    x, y = data["x"], data["y"]
    args = dict(batch_size=64, seed=0)
    args.update(kw)
    return KronodroidDataModule(x["train"], x["val"], x["test"], y["train"], y["val"], y["test"], **args)


def fit_seeded(data, max_epochs: int = 5):
    L.seed_everything(0, workers=True, verbose=False)
    model = KronodroidAutoencoder(N_FEAT, **SMALL, lr=3e-3)
    history = LossHistory()
    tr = trainer(max_epochs=max_epochs, deterministic=True, callbacks=[history])
    dm = make_dm(data)
    before = tr.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    tr.fit(model, datamodule=dm)
    return model, history.history, before, tr


@pytest.fixture(scope="module")
def trained(data):
    model, history, before, tr = fit_seeded(data)
    errors = {k: model.reconstruction_error(torch.from_numpy(v)).numpy() for k, v in data["x"].items()}
    return {"model": model, "history": history, "val_before": before, "trainer": tr, "errors": errors}


# -- preprocessing -------------------------------------------------------------------

def test_preprocessor_fitted_on_train_only(data):
    train, test = data["frames"]["train"], data["frames"]["test"]
    pre = data["pre"]
    other = Preprocessor(FEATURE_COLUMNS).fit(test)
    assert not np.allclose(pre.means, other.means)
    # the stored stats are the train split's
    logged = np.log1p(train[FEATURES].astype(float).fillna(train[FEATURES].median()).to_numpy())
    np.testing.assert_allclose(pre.means, logged.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pre.medians, train[FEATURES].median().to_numpy())


def test_preprocessor_results_do_not_depend_on_its_working_slices(data, monkeypatch):
    """Fit works a slice of columns at a time and transform a slice of rows: any slice sizes
    give bit-identical statistics and output (a registered model's preprocessing must not move)."""
    from dfp_core.serving import preprocess

    train, test = data["frames"]["train"].copy(), data["frames"]["test"]
    train.loc[train.index[::3], FEATURES[0]] = np.nan  # imputed
    train.loc[train.index[::5], FEATURES[1]] = np.inf
    whole = Preprocessor(FEATURE_COLUMNS).fit(train)
    expected = whole.transform(test)
    monkeypatch.setattr(preprocess, "FIT_CHUNK_COLUMNS", 7)
    monkeypatch.setattr(preprocess, "TRANSFORM_CHUNK_ROWS", 13)
    sliced = Preprocessor(FEATURE_COLUMNS).fit(train)
    for state in ("medians", "means", "stds"):
        assert np.array_equal(getattr(sliced, state), getattr(whole, state)), state
    out = sliced.transform(test)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, expected)
    assert np.array_equal(sliced.transform(test.iloc[:0]), expected[:0])


def test_preprocessor_standardises_train(data):
    pre, xt = data["pre"], data["x"]["train"]
    assert xt.dtype == np.float32 and xt.shape == (len(data["frames"]["train"]), N_FEAT)
    const = pre.constant_mask
    assert const[[FEATURES.index(c) for c in CONSTANT]].all()
    # Without the z clip the train split is exactly standardised ...
    unclipped = Preprocessor(FEATURE_COLUMNS, z_clip=None).fit(data["frames"]["train"])
    xu = unclipped.transform(data["frames"]["train"])
    np.testing.assert_allclose(xu[:, ~const].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(xu[:, ~const].std(axis=0), 1.0, atol=1e-3)
    # ... and by default extreme z-scores are clipped to +-Z_CLIP, nothing else changes.
    assert np.abs(xt).max() <= Z_CLIP
    np.testing.assert_array_equal(xt, np.clip(xu, -Z_CLIP, Z_CLIP))
    assert np.all(xt[:, const] == 0.0)
    # a constant column maps to 0 even when other data has a value there
    odd = data["frames"]["test"].copy()
    odd[CONSTANT[0]] = 7
    assert np.all(pre.transform(odd)[:, FEATURES.index(CONSTANT[0])] == 0.0)
    assert np.isfinite(data["x"]["test"]).all()


def test_preprocessor_imputes_train_median_and_clips(data):
    pre = data["pre"]
    j = FEATURES.index("files_inside_apk")
    median = pre.medians[j]
    assert np.isfinite(median) and median == data["frames"]["train"]["files_inside_apk"].median()
    row = data["frames"]["test"].iloc[[0, 0]].copy()
    row["files_inside_apk"] = [np.nan, median]
    row["nr_services"] = [-5, 0]  # negatives clip to 0
    out = pre.transform(row)
    assert out[0, j] == out[1, j] == np.float32((np.log1p(median) - pre.means[j]) / pre.stds[j])
    k = FEATURES.index("nr_services")
    assert out[0, k] == out[1, k]


def test_preprocessor_json_round_trip_and_determinism(data, tmp_path):
    pre = data["pre"]
    path = pre.save(tmp_path / "pre.json")
    loaded = Preprocessor.load(path)
    assert loaded.features == tuple(FEATURES)
    assert json.loads(path.read_text())["features"] == FEATURES
    for split in ("train", "test"):
        np.testing.assert_array_equal(loaded.transform(data["frames"][split]), data["x"][split])
    again = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(data["frames"]["val"]), data["x"]["val"])
    refit = Preprocessor(FEATURE_COLUMNS).fit(data["frames"]["train"])
    np.testing.assert_array_equal(refit.transform(data["frames"]["train"]), data["x"]["train"])


def test_preprocessor_missing_columns(data):
    bad = data["frames"]["test"].drop(columns=["nr_services", "sc_read"])
    with pytest.raises(DatasetError, match="nr_services") as exc:
        data["pre"].transform(bad)
    assert "sc_read" in str(exc.value)
    with pytest.raises(DatasetError, match="not fitted"):
        Preprocessor(FEATURE_COLUMNS).transform(data["frames"]["test"])
    with pytest.raises(DatasetError, match="empty"):
        Preprocessor(FEATURE_COLUMNS).fit(data["frames"]["test"].iloc[:0])


# -- data module ---------------------------------------------------------------------

def _rows(loader) -> np.ndarray:
    return torch.cat([b[0] for b in loader]).numpy()


def test_datamodule_benign_only_and_all(data):
    x, y = data["x"], data["y"]
    dm = make_dm(data)
    assert dm.n_train == int((y["train"] == 0).sum()) and dm.n_val == int((y["val"] == 0).sum())
    seen = _rows(dm.train_dataloader())
    assert len(seen) == dm.n_train
    benign = {r.tobytes() for r in x["train"][y["train"] == 0]}
    assert {r.tobytes() for r in seen} == benign
    np.testing.assert_array_equal(_rows(dm.val_dataloader()), x["val"][y["val"] == 0])
    assert len(_rows(dm.test_dataloader())) == len(x["test"])  # the test loader serves every row
    everything = make_dm(data, train_on="all")
    assert everything.n_train == len(x["train"]) and everything.n_val == len(x["val"])


def test_datamodule_semi_supervised_batches_carry_labels(data):
    x, y = data["x"], data["y"]
    dm = make_dm(data, train_on="semi")
    assert dm.n_train == len(x["train"]) and dm.n_val == int((y["val"] == 0).sum())  # validation stays benign
    batches = list(dm.train_dataloader())
    assert all(len(b) == 2 for b in batches)
    seen_x = torch.cat([b[0] for b in batches]).numpy()
    seen_y = torch.cat([b[1] for b in batches]).numpy()
    order = {r.tobytes(): int(label) for r, label in zip(x["train"], y["train"])}
    assert len(seen_x) == len(x["train"]) and [order[r.tobytes()] for r in seen_x] == seen_y.tolist()
    np.testing.assert_array_equal(_rows(dm.val_dataloader()), x["val"][y["val"] == 0])
    with pytest.raises(DatasetError, match="train_on='semi' needs labels for the train split"):
        KronodroidDataModule(x["train"], x["val"], train_on="semi")


def test_semi_supervised_training_pushes_labelled_malware_past_the_margin(data):
    from dfp_core.ml.model import MALWARE_MARGIN

    def fit(train_on: str):
        L.seed_everything(0, workers=True, verbose=False)
        model = KronodroidAutoencoder(N_FEAT, **SMALL, lr=3e-3)
        trainer(max_epochs=8, deterministic=True).fit(model, datamodule=make_dm(data, train_on=train_on))
        return model.reconstruction_error(torch.from_numpy(data["x"]["test"])).numpy()

    y = data["y"]["test"]
    plain, semi = fit("benign"), fit("semi")
    gap = lambda e: np.median(e[y == 1]) - np.median(e[y == 0])  # noqa: E731
    assert gap(semi) > gap(plain)  # test malware (unseen rows) is pushed further from benign
    assert np.median(semi[y == 1]) > 0.5 * MALWARE_MARGIN


def test_datamodule_errors(data):
    x, y = data["x"], data["y"]
    with pytest.raises(DatasetError, match="val split is empty"):
        KronodroidDataModule(x["train"], x["val"][:0], None, y["train"], y["val"][:0])
    with pytest.raises(DatasetError, match="train split is empty"):
        KronodroidDataModule(x["train"][:0], x["val"], train_on="all")
    malware = y["train"] == 1
    with pytest.raises(DatasetError, match="no benign rows"):
        KronodroidDataModule(x["train"][malware], x["val"], None, y["train"][malware], y["val"])
    with pytest.raises(DatasetError, match="needs labels"):
        KronodroidDataModule(x["train"], x["val"])
    with pytest.raises(DatasetError, match="features"):
        KronodroidDataModule(x["train"], x["val"][:, :10], train_on="all")


def test_datamodule_seeded_shuffling(data):
    a = _rows(make_dm(data, seed=7).train_dataloader())
    b = _rows(make_dm(data, seed=7).train_dataloader())
    c = _rows(make_dm(data, seed=8).train_dataloader())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # successive epochs of one loader are different permutations of the same rows
    loader = make_dm(data, seed=7).train_dataloader()
    e1, e2 = _rows(loader), _rows(loader)
    assert not np.array_equal(e1, e2)
    assert sorted(r.tobytes() for r in e1) == sorted(r.tobytes() for r in e2)


# -- model / Lightning ---------------------------------------------------------------

def test_fast_dev_run(data):
    model = KronodroidAutoencoder(N_FEAT)
    assert model.hparams.hidden_dims == (512, 128) and model.hparams.latent_dim == 64
    dm = make_dm(data)
    tr = trainer(fast_dev_run=True)
    tr.fit(model, datamodule=dm)
    assert np.isfinite(tr.validate(model, datamodule=dm, verbose=False)[0]["val_loss"])
    assert np.isfinite(tr.test(model, datamodule=dm, verbose=False)[0]["test_loss"])


def test_reconstruction_error_shape_and_mode(data):
    model = KronodroidAutoencoder(N_FEAT, **SMALL).train()
    x = torch.from_numpy(data["x"]["test"])
    err = model.reconstruction_error(x)
    assert err.shape == (len(x),) and not err.requires_grad and (err >= 0).all()
    assert model.training  # mode restored
    expected = ((model.eval()(x) - x) ** 2).mean(dim=1).detach()
    torch.testing.assert_close(err, expected)


def test_training_lowers_val_loss_and_separates(data, trained):
    hist = trained["history"]
    assert len(hist["train_loss"]) == len(hist["val_loss"]) == 5
    assert hist["val_loss"][-1] < trained["val_before"]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    errs, y = trained["errors"]["test"], data["y"]["test"]
    assert roc_auc_score(y, errs) > 0.9
    thr = M.threshold_for_fpr(trained["errors"]["val"], data["y"]["val"], 0.05)
    result = M.evaluate(errs, y, data["frames"]["test"]["data_source"].to_numpy(), thr)
    assert result["test_roc_auc"] > 0.9
    assert result["test_recon_loss_malware"] > result["test_recon_loss_benign"]


def test_seeded_training_is_reproducible(data, trained):
    model, _, _, _ = fit_seeded(data)
    again = model.reconstruction_error(torch.from_numpy(data["x"]["test"])).numpy()
    np.testing.assert_allclose(again, trained["errors"]["test"], atol=1e-6)


def test_early_stopping_on_plateau(data):
    from lightning.pytorch.callbacks import EarlyStopping

    L.seed_everything(0, verbose=False)
    model = KronodroidAutoencoder(N_FEAT, **SMALL, lr=0.0)  # lr 0: val loss is flat
    stop = EarlyStopping(monitor="val_loss", patience=2, mode="min")
    tr = trainer(max_epochs=20, callbacks=[stop])
    tr.fit(model, datamodule=make_dm(data, batch_size=256))
    assert tr.current_epoch < 20
    assert stop.stopped_epoch > 0 and tr.should_stop


def test_plain_loop_lowers_loss(data):
    torch.manual_seed(0)
    model = KronodroidAutoencoder(N_FEAT, **SMALL, lr=3e-3)
    dm = make_dm(data)
    hist = train_plain(model, dm.train_dataloader(), dm.val_dataloader(), max_epochs=4, lr=None)
    assert len(hist["train_loss"]) == len(hist["val_loss"]) == 4
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert hist["samples"] == 4 * dm.n_train and hist["seconds"] > 0
    assert not model.training


# -- metrics -------------------------------------------------------------------------

def test_metrics_perfect_separation():
    errors = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    out = M.evaluate(errors, labels, None, threshold=0.5)
    assert out["test_roc_auc"] == 1.0 and out["test_pr_auc"] == 1.0
    assert out["test_precision"] == out["test_recall"] == out["test_f1"] == 1.0
    assert out["threshold"] == 0.5
    assert out["test_recon_loss"] == pytest.approx(errors.mean())
    assert out["test_recon_loss_benign"] == pytest.approx(0.2)
    assert out["test_recon_loss_malware"] == pytest.approx(0.85)
    assert M.recon_loss(errors) == pytest.approx(0.46)
    # strictly greater than the threshold counts as malware
    assert M.evaluate(errors, labels, None, threshold=0.8)["test_recall"] == 0.5


def test_threshold_for_fpr_flags_at_most_the_target_share_of_benign():
    benign = np.arange(100) / 100.0  # 0.00 .. 0.99
    errors = np.r_[benign, [50.0, 60.0]]
    labels = np.r_[np.zeros(100, int), [1, 1]]
    # 5 of 100 benign may be flagged: the threshold is the 6th largest, 0.94 (0.95..0.99 lie above).
    assert M.threshold_for_fpr(errors, labels, 0.05) == pytest.approx(0.94)
    assert M.false_positive_rate(errors, labels, 0.94) == pytest.approx(0.05)
    assert M.threshold_for_fpr(errors, labels, 0.0) == pytest.approx(0.99)  # nothing benign flagged
    assert M.threshold_for_fpr(errors, labels, 0.051) == pytest.approx(0.94)  # never over the target
    # Ties: 10 equal benign errors cannot be half-flagged, so none of them is.
    tied = np.r_[np.zeros(90), np.ones(10)]
    assert M.false_positive_rate(tied, np.zeros(100, int), M.threshold_for_fpr(tied, np.zeros(100, int), 0.05)) == 0.0
    with pytest.raises(DatasetError, match="no benign"):
        M.threshold_for_fpr(errors[-2:], labels[-2:], 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        M.threshold_for_fpr(errors, labels, 1.0)


def test_the_threshold_fpr_interval_covers_the_fpr_on_new_benign_apps():
    """Thresholds set on 222 benign validation scores for 1%: over many draws, the FPR the
    threshold has on the whole benign population lies in the 95% interval about 95% of the
    time; the interval is wide at 222 apps and narrows with more."""
    low, high = M.threshold_fpr_interval(222, 0.01)
    assert 0.002 < low < 0.004 and 0.03 < high < 0.035
    rng = np.random.default_rng(0)
    inside = 0
    for _ in range(2000):
        benign = rng.random(222)  # uniform scores: the true FPR of a threshold t is 1 - t
        threshold = M.threshold_for_fpr(benign, np.zeros(222, int), 0.01)
        inside += low <= 1.0 - threshold <= high
    assert 0.93 < inside / 2000 < 0.97
    wide, narrow = np.subtract(*M.threshold_fpr_interval(222, 0.05)[::-1]), np.subtract(*M.threshold_fpr_interval(5000, 0.05)[::-1])
    assert narrow < wide / 4
    with pytest.raises(ValueError, match="at least one benign"):
        M.threshold_fpr_interval(0, 0.05)


def test_the_operating_point_training_and_retarget_set_from_benign_scores():
    scores = np.random.default_rng(1).normal(size=300)
    point = M.operating_point(scores, 0.02)
    assert point["threshold"] == M.threshold_for_fpr(scores, np.zeros(300, int), 0.02)
    assert point["val_fpr"] == (scores > point["threshold"]).mean() <= 0.02 and point["val_benign"] == 300
    assert (point["fpr_95_low"], point["fpr_95_high"]) == M.threshold_fpr_interval(300, 0.02)


def test_tpr_at_fpr_reads_the_roc_curve():
    # 100 benign 0..99, 10 malware: 5 above every benign, 5 in the benign range (at 96..100 ranks).
    errors = np.r_[np.arange(100.0), [200.0] * 5, [97.5, 96.5, 95.5, 94.5, 93.5]]
    labels = np.r_[np.zeros(100, int), np.ones(10, int)]
    assert M.tpr_at_fpr(errors, labels, 0.0) == pytest.approx(0.5)
    # at most 1 benign flagged (99): malware above 98 -> only the five 200s
    assert M.tpr_at_fpr(errors, labels, 0.01) == pytest.approx(0.5)
    assert M.tpr_at_fpr(errors, labels, 0.05) == pytest.approx(0.9)  # benign 95..99 flagged: 97.5, 96.5, 95.5, 94.5 caught
    assert M.tpr_at_fpr(errors, labels, 0.10) == pytest.approx(1.0)
    out = M.evaluate(errors, labels, None, threshold=94.0)
    assert out["test_tpr_at_fpr_1pct"] == pytest.approx(0.5) and out["test_tpr_at_fpr_10pct"] == 1.0
    assert out["test_fpr"] == pytest.approx(0.05)  # 95..99 above 94
    assert M.fpr_key(0.05) == "tpr_at_fpr_5pct" and M.fpr_key(0.001) == "tpr_at_fpr_0_1pct"


def test_metrics_match_sklearn_and_per_source():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    errors = rng.gamma(2.0, 1.0, 400) + labels * rng.gamma(1.0, 1.0, 400)
    sources = np.where(rng.random(400) < 0.5, "emulator", "real_device")
    thr = 2.5
    out = M.evaluate(errors, labels, sources, thr)
    pred = errors > thr
    assert out["test_precision"] == pytest.approx(precision_score(labels, pred))
    assert out["test_recall"] == pytest.approx(recall_score(labels, pred))
    assert out["test_f1"] == pytest.approx(f1_score(labels, pred))
    assert out["test_roc_auc"] == pytest.approx(roc_auc_score(labels, errors))
    for src in ("emulator", "real_device"):
        m = sources == src
        for key in ("roc_auc", "pr_auc", "precision", "recall", "f1", "fpr", "tpr_at_fpr_5pct"):
            assert f"test_{key}__{src}" in out
        assert out[f"test_roc_auc__{src}"] == pytest.approx(roc_auc_score(labels[m], errors[m]))
        assert out[f"test_f1__{src}"] == pytest.approx(f1_score(labels[m], pred[m]))
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())


def test_metrics_single_class_source_skipped():
    errors = np.array([0.1, 0.9, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 0, 0, 0])
    sources = np.array(["emulator", "emulator", "real_device", "real_device", "real_device"])
    out = M.evaluate(errors, labels, sources, 0.5)
    assert "test_roc_auc__emulator" in out
    # One class on real_device: no AUC, precision or recall there, but its benign FPR counts.
    assert [k for k in out if k.endswith("__real_device")] == ["test_fpr__real_device"]
    lower = M.evaluate(errors, labels, sources, 0.25)
    assert lower["test_fpr__real_device"] == pytest.approx(2 / 3) and lower["test_fpr__emulator"] == 0.0
    assert lower["test_fpr"] == pytest.approx(0.5)
    # a split without malware: no AUC keys, no crash
    benign_only = M.evaluate(errors[labels == 0], labels[labels == 0], None, 0.5)
    assert "test_roc_auc" not in benign_only and benign_only["test_recall"] == 0.0
    with pytest.raises(DatasetError):
        M.evaluate(errors, labels[:3], None, 0.5)


# -- plots ---------------------------------------------------------------------------

def test_plots_write_pngs(data, trained, tmp_path):
    errs, y = trained["errors"]["test"], data["y"]["test"]
    src = data["frames"]["test"]["data_source"].to_numpy()
    paths = [
        plot_loss_curves(trained["history"], tmp_path / "loss.png"),
        *plot_roc_pr(errs, y, tmp_path / "roc.png", tmp_path / "pr.png", data_source=src),
        plot_error_histogram(errs, y, float(np.quantile(errs, 0.9)), tmp_path / "hist.png"),
        plot_error_histogram(np.r_[errs, 1e4], np.r_[y, 1], 1.0, tmp_path / "hist_log.png"),
        plot_roc_pr(errs[y == 0], y[y == 0], tmp_path / "roc1.png", tmp_path / "pr1.png")[0],
        plot_loss_curves({}, tmp_path / "empty.png"),
    ]
    for path in paths:
        blob = path.read_bytes()
        assert len(blob) > 1000 and blob[:8] == PNG_MAGIC, path


# -- MLflow pyfunc -------------------------------------------------------------------

def test_pyfunc_log_load_predict(data, trained, tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from dfp_core.ml.fit import fit_error_score
    from dfp_core.ml.pyfunc import as_model_input, build_model_artifacts, log_scorer_model
    from dfp_core.serving.scorer import KronodroidScorer, load_network

    model, pre = trained["model"], data["pre"]
    error_score = fit_error_score("error_mahalanobis", model, data["x"]["train"][data["y"]["train"] == 0])
    _, val_scores = error_score.scores(model, data["x"]["val"])
    thr = M.threshold_for_fpr(val_scores, data["y"]["val"], 0.05)
    arts = build_model_artifacts(model, pre, error_score, thr, 0.05, tmp_path / "artifacts")
    assert set(arts) == {"network_state", "network_config", "preprocessor", "threshold", "error_score"}
    assert json.loads(open(arts["threshold"]).read()) == {"threshold": thr, "score": "error_mahalanobis",
                                                          "target_fpr": 0.05}
    # The plain network takes the LightningModule's state dict as it is.
    network = load_network(arts["network_state"], arts["network_config"])
    frame = data["frames"]["test"]
    direct = model.reconstruction_error(torch.from_numpy(pre.transform(frame))).numpy()
    np.testing.assert_allclose(network.reconstruction_error(pre.transform(frame)).numpy(), direct, atol=1e-6)
    _, direct_score = error_score.scores(model, pre.transform(frame))

    # MLflow 3.17 refuses the file store unless opted in; it is its real local backend.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"file:{tmp_path}/mlruns")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # An experiment of this store: another test may have made a different one active.
            experiment = mlflow.set_experiment("pyfunc-roundtrip")
            with mlflow.start_run(experiment_id=experiment.experiment_id):
                info = log_scorer_model(model, pre, error_score, thr, 0.05, as_model_input(frame.head(3)),
                                        tmp_path / "log")
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "downloaded")))
        # Logged from code: no pickle, only the inference modules, pinned requirements.
        assert not list(local.rglob("*.pkl"))
        code = sorted(str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py"))
        assert code == sorted(f"dfp_core/{m}" for m in ("__init__.py", "errors.py", "serving/__init__.py",
                                                          "serving/network.py", "serving/preprocess.py", "serving/score.py",
                                                          "serving/scorer.py"))
        requirements = (local / "requirements.txt").read_text().split()
        assert all("==" in r for r in requirements) and {"mlflow", "torch", "numpy", "pandas"} <= {r.split("==")[0] for r in requirements}
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        model_input = as_model_input(frame).assign(extra_column="ignored")
        out = loaded.predict(model_input)
        assert list(out.columns) == ["sample_id", "reconstruction_error", "anomaly_score", "is_anomaly"]
        assert len(out) == len(frame)
        assert out["reconstruction_error"].dtype == np.float64 and out["is_anomaly"].dtype == bool
        assert out["anomaly_score"].dtype == np.float64
        assert out["sample_id"].tolist() == frame["sample_id"].tolist()
        np.testing.assert_allclose(out["reconstruction_error"].to_numpy(), direct, atol=1e-6)
        np.testing.assert_allclose(out["anomaly_score"].to_numpy(), direct_score, rtol=1e-5)
        np.testing.assert_array_equal(out["is_anomaly"].to_numpy(), out["anomaly_score"].to_numpy() > thr)
        # without sample_id: just the three score columns
        bare = loaded.predict(as_model_input(frame).drop(columns=["sample_id"]))
        assert list(bare.columns) == ["reconstruction_error", "anomaly_score", "is_anomaly"] and len(bare) == len(frame)
        # MLflow's schema enforcement names the missing columns
        with pytest.raises(Exception, match=r"missing inputs \['nr_services'\]"):
            loaded.predict(model_input.drop(columns=["nr_services"]))
    finally:
        mlflow.set_tracking_uri(previous)

    # the scorer itself (no MLflow schema in front): raw int frames; missing columns named
    scorer = KronodroidScorer.from_artifacts(arts)
    raw = scorer.predict(None, frame)
    np.testing.assert_allclose(raw["reconstruction_error"].to_numpy(), direct, atol=1e-6)
    with pytest.raises(MlflowException, match="nr_services"):
        scorer.predict(None, frame.drop(columns=["nr_services"]))
    with pytest.raises(DatasetError, match="files_inside_apk"):
        as_model_input(frame.drop(columns=["files_inside_apk"]))


# -- the anomaly score ---------------------------------------------------------------

def test_error_mahalanobis_is_the_ledoit_wolf_distance_of_the_error_vector(data, trained, tmp_path):
    from sklearn.covariance import LedoitWolf

    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.score import ErrorScore

    model, x = trained["model"], data["x"]
    benign = x["train"][data["y"]["train"] == 0]
    fitted = fit_error_score("error_mahalanobis", model, benign, batch_size=7)  # batches join up

    def residual(v):
        model.eval()
        with torch.no_grad():
            return (model(torch.from_numpy(v)) - torch.from_numpy(v)).abs().numpy().astype(np.float64)

    reference = LedoitWolf().fit(residual(benign))
    mse, score = fitted.scores(model, x["test"], batch_size=5)
    np.testing.assert_allclose(score, reference.mahalanobis(residual(x["test"])), rtol=1e-6)
    np.testing.assert_allclose(mse, trained["errors"]["test"], rtol=1e-5)
    # saved as plain tensors, read back with weights_only: the same scores
    fitted.save(tmp_path / "error_score.pt")
    again = ErrorScore.load("error_mahalanobis", tmp_path / "error_score.pt")
    np.testing.assert_allclose(again.scores(model, x["test"], batch_size=5)[1], score, rtol=1e-12)
    # malware's error pattern is further from the benign ones than benign test apps'
    y = data["y"]["test"]
    assert np.median(score[y == 1]) > np.median(score[y == 0])


def test_error_mahalanobis_is_fitted_on_a_seeded_sample_of_a_large_split(data, trained):
    """Past ``max_rows`` benign rows the covariance comes from a seeded sample of that many:
    the same sample for the same seed, the fit of exactly those rows."""
    from dfp_core.ml.fit import fit_error_score

    model, benign = trained["model"], data["x"]["train"][data["y"]["train"] == 0]
    rows = len(benign) // 2
    sampled = fit_error_score("error_mahalanobis", model, benign, max_rows=rows, seed=3)
    again = fit_error_score("error_mahalanobis", model, benign, max_rows=rows, seed=3)
    np.testing.assert_array_equal(sampled.precision, again.precision)
    chosen = benign[np.sort(np.random.default_rng(3).choice(len(benign), rows, replace=False))]
    direct = fit_error_score("error_mahalanobis", model, chosen, max_rows=rows)
    np.testing.assert_allclose(sampled.precision, direct.precision, rtol=1e-12)
    whole = fit_error_score("error_mahalanobis", model, benign)
    assert not np.allclose(sampled.precision, whole.precision)


def test_grouped_error_sums_each_feature_groups_standardised_error(data, trained, tmp_path):
    """Per group (permissions, syscalls, metadata) the mean squared residual, shortfalls only
    (reconstruction above the input) for permissions and metadata, standardised by the benign
    training rows' mean and std of that term and capped at GROUP_CAP; the score is their sum
    plus WEAKEST_GROUP_WEIGHT times the smallest of them where that is above 0."""
    from dfp_core.kronodroid.schema import FEATURE_GROUPS
    from dfp_core.ml.fit import GROUP_CAP, WEAKEST_GROUP_WEIGHT, fit_error_score
    from dfp_core.serving.score import ErrorScore

    model, x = trained["model"], data["x"]
    benign = x["train"][data["y"]["train"] == 0]
    fitted = fit_error_score("grouped_error", model, benign, batch_size=7)  # batches join up
    assert fitted.shortfall_only.tolist() == [True, False, True]

    def residual(v):
        model.eval()
        with torch.no_grad():
            return (model(torch.from_numpy(v)) - torch.from_numpy(v)).numpy().astype(np.float64)

    def terms(v):
        r, columns = residual(v), []
        for name in ("permissions", "syscalls", "metadata"):
            part = r[:, [FEATURES.index(f) for f in FEATURE_GROUPS[name]]]
            columns.append((np.clip(part, 0, None) if name != "syscalls" else part) ** 2)
        return np.stack([c.mean(axis=1) for c in columns], axis=1)

    reference = terms(benign)
    standardised = (terms(x["test"]) - reference.mean(axis=0)) / reference.std(axis=0)
    capped = np.minimum(standardised, GROUP_CAP)
    expected = capped.sum(axis=1) + WEAKEST_GROUP_WEIGHT * np.maximum(capped.min(axis=1), 0.0)
    mse, score = fitted.scores(model, x["test"], batch_size=5)
    np.testing.assert_allclose(score, expected, rtol=1e-6, atol=1e-5)  # float32 batches of 5 vs 1
    np.testing.assert_allclose(mse, trained["errors"]["test"], rtol=1e-5)
    # on the benign training rows each group's term is standardised: their sum has mean 0
    plain = fit_error_score("grouped_error", model, benign, weakest_weight=0.0)
    assert abs(plain.scores(model, benign)[1].mean()) < 1e-6
    # both ways for every group is another score (the ablation bench/detection.py measures)
    both_ways = fit_error_score("grouped_error", model, benign, shortfall_only={"permissions": False, "metadata": False})
    assert not np.allclose(both_ways.scores(model, x["test"])[1], score)
    # saved as plain tensors, read back with weights_only: the same scores
    fitted.save(tmp_path / "error_score.pt")
    again = ErrorScore.load("grouped_error", tmp_path / "error_score.pt")
    np.testing.assert_array_equal(again.groups, fitted.groups)
    np.testing.assert_allclose(again.scores(model, x["test"], batch_size=5)[1], score, rtol=1e-12)
    y = data["y"]["test"]
    assert np.median(score[y == 1]) > np.median(score[y == 0])


def test_the_cap_bounds_each_group_and_a_version_saved_without_it_scores_as_before(data, trained, tmp_path):
    """A group adds at most the cap to the score, its features' shares scaled down to add up to
    it; a statistics file from before the cap (no ``cap`` tensor) loads uncapped: the same
    scores as a score fitted without a cap."""
    import torch as t

    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.score import ErrorScore

    model, x = trained["model"], data["x"]
    benign = x["train"][data["y"]["train"] == 0]
    uncapped = fit_error_score("grouped_error", model, benign, cap=None, weakest_weight=0.0)
    explained = uncapped.explained(model, x["test"], top=3)
    cap = float(np.quantile(explained.group_contributions.max(axis=1), 0.5))  # half the apps reach it
    capped = fit_error_score("grouped_error", model, benign, cap=cap, weakest_weight=0.0)
    done = capped.explained(model, x["test"], top=3)
    assert done.group_contributions.max() <= cap + 1e-9
    np.testing.assert_allclose(done.group_contributions, np.minimum(explained.group_contributions, cap), atol=1e-9)
    np.testing.assert_allclose(done.group_contributions.sum(axis=1), done.scores, rtol=1e-9, atol=1e-9)
    reached = explained.group_contributions.max(axis=1) > cap
    assert reached.any() and (~reached).any()
    np.testing.assert_array_equal(done.scores[~reached], explained.scores[~reached])  # below the cap: unchanged
    assert (done.scores[reached] < explained.scores[reached]).all()
    # a file saved before the cap existed: the four tensors only
    capped.save(tmp_path / "new.pt")
    assert "cap" in t.load(tmp_path / "new.pt", weights_only=True)
    t.save({k: v for k, v in t.load(tmp_path / "new.pt", weights_only=True).items() if k != "cap"}, tmp_path / "old.pt")
    old = ErrorScore.load("grouped_error", tmp_path / "old.pt")
    assert old.cap is None
    np.testing.assert_array_equal(old.scores(model, x["test"])[1], uncapped.scores(model, x["test"])[1])
    np.testing.assert_array_equal(ErrorScore.load("grouped_error", tmp_path / "new.pt").scores(model, x["test"])[1],
                                  capped.scores(model, x["test"])[1])
    with pytest.raises(ValueError, match="cap on a group's term must be positive, got 0.0"):
        fit_error_score("grouped_error", model, benign, cap=0.0)


def test_the_weakest_group_counts_again_and_a_version_saved_without_it_scores_as_before(data, trained, tmp_path):
    """The smallest capped group term is added ``weakest_weight`` times more where it is above
    0: only an app that stands out in every group gains. Its features' shares count as often,
    so the groups' contributions still add up to the score; a file saved before the weight
    (cap only) scores as a score fitted with weight 0."""
    import torch as t

    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.score import ErrorScore

    model, x = trained["model"], data["x"]
    benign = x["train"][data["y"]["train"] == 0]
    cap_only = fit_error_score("grouped_error", model, benign, cap=10.0, weakest_weight=0.0)
    weighted = fit_error_score("grouped_error", model, benign, cap=10.0, weakest_weight=2.0)
    before, after = cap_only.explained(model, x["test"], top=3), weighted.explained(model, x["test"], top=3)
    groups = before.group_contributions  # each group's capped term
    weakest, everywhere = groups.argmin(axis=1), groups.min(axis=1) > 0
    assert everywhere.any() and (~everywhere).any()  # apps of both kinds in the test split
    extra = 2.0 * np.maximum(groups.min(axis=1), 0.0)
    np.testing.assert_allclose(after.scores, groups.sum(axis=1) + extra, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(after.scores[~everywhere], before.scores[~everywhere])  # no gain: the same bits
    assert (after.scores[everywhere] > before.scores[everywhere]).all()
    expected = groups.copy()
    expected[np.arange(len(groups))[everywhere], weakest[everywhere]] *= 3.0
    np.testing.assert_allclose(after.group_contributions, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(after.group_contributions.sum(axis=1), after.scores, rtol=1e-9, atol=1e-9)
    assert len(set(weakest.tolist())) > 1  # the weakest group differs between apps
    # a file saved before the weight: cap only, as fitted with weight 0
    weighted.save(tmp_path / "new.pt")
    saved = t.load(tmp_path / "new.pt", weights_only=True)
    assert float(saved["weakest_weight"]) == 2.0
    t.save({k: v for k, v in saved.items() if k != "weakest_weight"}, tmp_path / "old.pt")
    old = ErrorScore.load("grouped_error", tmp_path / "old.pt")
    assert old.weakest_weight is None
    np.testing.assert_array_equal(old.scores(model, x["test"])[1], cap_only.scores(model, x["test"])[1])
    np.testing.assert_array_equal(ErrorScore.load("grouped_error", tmp_path / "new.pt").scores(model, x["test"])[1],
                                  weighted.scores(model, x["test"])[1])
    # what the model's description says of each
    assert weighted.described() == ("Each group's standardised term is capped at 10. The smallest of them counts 3 "
                                    "times where it is above 0 (an app that stands out in every group).")
    assert cap_only.described() == "Each group's standardised term is capped at 10."
    assert fit_error_score("grouped_error", model, benign, cap=None, weakest_weight=0.0).described() == ""
    cap_only.save(tmp_path / "zero.pt")  # weight 0 is saved as no weight
    assert "weakest_weight" not in t.load(tmp_path / "zero.pt", weights_only=True)
    with pytest.raises(ValueError, match="weakest group's weight must be 0 or more, got -1.0"):
        fit_error_score("grouped_error", model, benign, weakest_weight=-1.0)


def test_grouped_error_contributions_add_up_and_name_a_planted_syscall_first(data, trained):
    """Each feature's signed share of the grouped score: a group's shares add up to its
    standardised term, all of them to the score; one extreme syscall count in an otherwise
    ordinary app is the feature that added most."""
    from dfp_core.kronodroid.schema import FEATURE_GROUPS
    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.scorer import KronodroidScorer

    model, x = trained["model"], data["x"]
    fitted = fit_error_score("grouped_error", model, x["train"][data["y"]["train"] == 0])
    explained = fitted.explained(model, x["test"], top=5, batch_size=7)
    _, score = fitted.scores(model, x["test"], batch_size=7)
    np.testing.assert_array_equal(explained.scores, score)  # the same bits as without the explanation
    np.testing.assert_allclose(explained.group_contributions.sum(axis=1), score, rtol=1e-9, atol=1e-9)
    assert (np.diff(explained.top_contributions, axis=1) <= 0).all()

    frame = data["frames"]["test"]
    benign = frame[frame["label"] == 0].head(20).reset_index(drop=True)
    train = data["frames"]["train"]
    syscall = max(FEATURE_GROUPS["syscalls"], key=lambda f: train[f].std())  # one that varies in training
    scorer = KronodroidScorer()
    scorer.network, scorer.preprocessor, scorer.threshold, scorer.error_score = model, data["pre"], 0.0, fitted
    scorer.group_names = ("permissions", "syscalls", "metadata")
    before = scorer.explain_frame(benign, 3)
    app = int(before["anomaly_score"].idxmin())  # the most ordinary of them
    planted = benign.copy()
    planted.loc[app, syscall] = train[syscall].max() * 50
    after = scorer.explain_frame(planted, 3)
    assert after.loc[app, "top1_feature"] == syscall and after.loc[app, "top1_group"] == "syscalls"
    assert before.loc[app, "top1_feature"] != syscall
    assert after.loc[app, "anomaly_score"] > before.loc[app, "anomaly_score"]
    others = after.drop(index=app)[["anomaly_score", "top1_feature"]]
    pd.testing.assert_frame_equal(others, before.drop(index=app)[["anomaly_score", "top1_feature"]])  # the others unchanged
    # predict gives the same, asked with MLflow's params; explain=0 is the plain output
    asked = scorer.predict(None, planted, params={"explain": 3})
    pd.testing.assert_frame_equal(asked.drop(columns="sample_id"), after)
    plain = scorer.predict(None, planted, params={"explain": 0})
    assert list(plain.columns) == ["sample_id", "reconstruction_error", "anomaly_score", "is_anomaly"]
    np.testing.assert_array_equal(plain["anomaly_score"], after["anomaly_score"])
    from mlflow.exceptions import MlflowException

    for bad, words in ((-1, "must be a whole number of features"), (2.5, "must be a whole number"),
                       (477, "at most 476 features, got 477")):
        with pytest.raises(MlflowException, match=words):
            scorer.predict(None, planted, params={"explain": bad})
    with pytest.raises(ValueError, match="top must be between 1 and 476"):
        fitted.explained(model, x["test"], top=0)


def test_mse_score_is_the_reconstruction_error(data, trained):
    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.score import ErrorScore

    fitted = fit_error_score("mse", trained["model"], data["x"]["train"])
    mse, score = fitted.scores(trained["model"], data["x"]["val"])
    np.testing.assert_array_equal(mse, score)
    np.testing.assert_allclose(score, trained["errors"]["val"], rtol=1e-5)
    assert ErrorScore.load("mse", None).kind == "mse"  # versions without the statistics file


def test_score_refuses_what_it_cannot_compute(data, trained, tmp_path):
    from dfp_core.errors import DatasetError
    from dfp_core.ml.fit import fit_error_score
    from dfp_core.serving.score import ErrorScore

    with pytest.raises(ValueError, match="score must be one of grouped_error, error_mahalanobis, mse, got 'l1'"):
        ErrorScore("l1")
    with pytest.raises(ValueError, match="needs the location and precision"):
        ErrorScore("error_mahalanobis")
    with pytest.raises(DatasetError, match="at least 2 benign training rows, got 1"):
        fit_error_score("error_mahalanobis", trained["model"], data["x"]["train"][:1])
    fitted = fit_error_score("error_mahalanobis", trained["model"], data["x"]["train"])
    with pytest.raises(DatasetError, match=f"fitted on {N_FEAT} features, got {N_FEAT - 1}"):
        fitted.scores(trained["model"], data["x"]["val"][:, 1:])
    with pytest.raises(DatasetError, match="no fitted statistics"):
        ErrorScore.load("error_mahalanobis", None)
    with pytest.raises(ValueError, match="grouped_error needs the scale fitted"):
        ErrorScore("grouped_error", groups=np.zeros(3), shortfall_only=np.zeros(1), location=np.zeros(1))
    with pytest.raises(ValueError, match="or a group is empty"):  # group 1 has no feature
        ErrorScore("grouped_error", groups=np.zeros(3), shortfall_only=np.zeros(2), location=np.zeros(2),
                   scale=np.ones(2))
    with pytest.raises(DatasetError, match="476 feature names for 475 columns"):
        fit_error_score("grouped_error", trained["model"], data["x"]["train"][:, 1:])
    with pytest.raises(ValueError, match="shortfall_only names no feature group: perms"):
        fit_error_score("grouped_error", trained["model"], data["x"]["train"], shortfall_only={"perms": True})
    with pytest.raises(DatasetError, match="score 'l1' is not one this scorer knows"):
        ErrorScore.load("l1", tmp_path / "absent.pt")
    grouped = fit_error_score("grouped_error", trained["model"], data["x"]["train"])
    with pytest.raises(DatasetError, match=f"fitted on {N_FEAT} features, got {N_FEAT - 1}"):
        grouped.scores(trained["model"], data["x"]["val"][:, 1:])
    # a statistics file of another score (an error_mahalanobis one read as grouped_error)
    fitted.save(tmp_path / "error_score.pt")
    with pytest.raises(DatasetError, match="grouped_error statistics \\(error_score.pt\\) lack groups, shortfall_only, scale"):
        ErrorScore.load("grouped_error", tmp_path / "error_score.pt")


def test_the_configurable_scores_are_the_implemented_ones():
    from dfp_core.params import TrainConfig, params_of
    from dfp_core.serving.score import SCORES

    (score,) = [f for f in params_of(TrainConfig) if f.name == "score"]
    assert tuple(score.param.choices) == SCORES
    assert TrainConfig().score in SCORES
    from dfp_core.ml.training_report import SCORE_LABELS
    from dfp_core.ml.pyfunc import SCORE_WORDS

    assert set(SCORE_LABELS) == set(SCORE_WORDS) == set(SCORES)  # each score is named in the plot and description


def test_a_run_from_before_the_score_choice_is_retrained_with_its_own_score():
    from dfp_core import lineage
    from dfp_core.ml.reproduce import ModelLineage, config_from_run
    from dfp_core.params import TrainConfig

    tags = {lineage.TAG_REPOSITORY: "kronodroid", lineage.TAG_REF: "c0ffee", lineage.TAG_SNAPSHOT: "1"}
    logged = TrainConfig(latent_dim=8).to_params()
    assert logged["score"] == "grouped_error"
    now = ModelLineage("m", "3", "run", tags, tags, logged, {})
    earlier = ModelLineage("m", "2", "run", tags, tags, {**logged, "score": "error_mahalanobis"}, {})
    before = ModelLineage("m", "1", "run", tags, tags, {k: v for k, v in logged.items() if k != "score"}, {})
    assert config_from_run(now).score == "grouped_error" and config_from_run(now).latent_dim == 8
    assert config_from_run(earlier).score == "error_mahalanobis"  # a version from before the grouped default
    assert config_from_run(before).score == "mse" and config_from_run(before).latent_dim == 8
    assert config_from_run(before).ref == "c0ffee" and config_from_run(before).register is False


def test_compare_pinned_lets_other_definitions_through_only_when_asked_and_checks_the_ids_as_they_gave_them():
    import dataclasses

    from dfp_core import lineage
    from dfp_core.ml.reproduce import ModelLineage, compare_pinned

    spec = lineage.DatasetSpec("repo", "c" * 64, "kronodroid.fct_training_dataset", "7",
                               "kronodroid_autoencoder_features", "a" * 64, {"seed": 42})
    counts = {"train": 10, "val": 3, "test": 4}
    pinned = lineage.PinnedRows(spec, None, counts, {s: lineage.dataset_id(spec, s) for s in counts}, ("f1",))
    then = dataclasses.replace(spec, feast_defs_sha256="b" * 64)  # the definitions the version was trained under
    tags = {lineage.TAG_REF: spec.lakefs_commit, lineage.TAG_SOURCE_TABLE: spec.source_table,
            lineage.TAG_DEFS_SHA: then.feast_defs_sha256,
            **{tag: lineage.dataset_id(then, s) for s, tag in lineage.SPLIT_ID_TAGS.items()}}
    run_tags = {lineage.ROWS_TAGS[s]: str(n) for s, n in counts.items()}
    model = ModelLineage("m", "1", "run", tags, run_tags, {}, {})
    strict = compare_pinned(model, pinned)
    assert strict[0].startswith("feature definitions changed") and len(strict) == 4  # and the three ids
    assert compare_pinned(model, pinned, definitions=False) == []
    # Anything else that differs is still a difference.
    fewer = dataclasses.replace(pinned, counts={**counts, "val": 2})
    assert compare_pinned(model, fewer, definitions=False) == ["val rows: recorded 3, rebuilt 2"]
    wrong = ModelLineage("m", "1", "run", {**tags, lineage.TAG_TEST_ID: "ds-x"}, run_tags, {}, {})
    assert [d.split(":")[0] for d in compare_pinned(wrong, pinned, definitions=False)] == [lineage.TAG_TEST_ID]
