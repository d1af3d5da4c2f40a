"""Detection at an operating point, on the real KronoDroid subset, under two splits.

  .venv/bin/python bench/detection.py                  # both splits, every variant, seeds 0,1,2
  .venv/bin/python bench/detection.py --seeds 0 --variants default,std_error
  .venv/bin/python bench/detection.py --variants default,grouped --split-seeds 1,2,3   # other partitions too
  .venv/bin/python bench/detection.py --split-seeds 1,2,3 --jobs 4 --accelerator gpu   # splits in parallel
  .venv/bin/python bench/detection.py --variants weakest --split-seeds 9,...,24 --skip-default-split \
      --target-fpr 0.01 --jobs 2     # choose the cap and weakest-group weight on validation apps only

Splits (the real 2019 subset, ``../shared/data/kronodroid/``):
- ``random``: the project's own random split (``dfp_core.splits``, seed 42, 70/15/15);
- ``month``: train on January to September (a seeded 15% of those months held out as
  validation), test on October to December: the months a model never saw.

For each split and seed: the autoencoder (the product's ``fit.fit_and_evaluate`` for
``default``; variants of features, score, training or seeds beside it) and the three
baselines (PCA, IsolationForest, supervised RandomForest). Each method's threshold is
set for ``--target-fpr`` benign FPR on validation, as ``dfp train`` sets it. Figures:
ROC-AUC, PR-AUC, TPR at 1/5/10% FPR, and precision, recall, F1 and the benign FPR
reached on test at the threshold. Prints a JSON summary as its last line and writes
``results/detection.json`` (and ``results/detection_partial.json`` after each split, so
a run cut short keeps what it finished). Needs no stack: it reads the CSV with the
project's reader. ``--jobs N`` runs the splits in N processes, each with its share of
the CPU threads; ``--accelerator gpu`` trains every network on the GPU (figures then
differ slightly from CPU ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REAL_SUBSET, RESULTS, quiet_lightning, save  # noqa: E402
from _common import log as _log  # noqa: E402

TEST_MONTHS = (10, 11, 12)
STRICT_FPR = 0.005  # reported beside metrics.REPORTED_FPRS
# The "grouped" variant's caps on a group's standardised term (alone: no weakest-group weight).
CAPS = (None, 4.0, 6.0, 8.0, 10.0, 12.0)
# The "weakest" variant: the cap (None: none) and the weight of the weakest group's term
# (fit.GROUP_CAP, fit.WEAKEST_GROUP_WEIGHT), every pair scored from the same fit; the output's
# "chosen_on_validation" ranks them by validation TPR at 1% FPR, averaged over the runs of
# each kind of split and then over the kinds.
WEAKEST = tuple((cap, weight) for cap in (6.0, 8.0, 10.0, 12.0, None) for weight in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0))
VARIANTS = ("default", "grouped", "weakest", "soft_cap", "std_error", "error_mahalanobis", "latent_mahalanobis",
            "denoise", "flags_raw", "ensemble5", "semi_supervised", "capacity")
# The "soft_cap" variant: each group's standardised term z bent instead of cut at the cap c,
# so an app far out in one group still ranks above one just at the cap (summed over groups).
SOFT_CAPS = {
    **{f"tanh{c:g}": (lambda z, c=c: c * np.tanh(z / c)) for c in (6.0, 8.0, 10.0)},
    **{f"log_over{c:g}": (lambda z, c=c: np.where(z > c, c + np.log1p(np.maximum(z - c, 0.0)), z)) for c in (4.0, 6.0, 8.0)},
    **{f"sqrt_over{c:g}": (lambda z, c=c: np.where(z > c, c + np.sqrt(np.maximum(z - c, 0.0)), z)) for c in (4.0, 6.0)},
}
# The "grouped" variant: the product's grouped_error (shortfalls only for permissions and
# metadata) against other choices of the groups counting shortfalls only (fit_error_score's
# shortfall_only), the max over groups instead of the sum, and single groups alone.
GROUPED = {
    "both_ways": {"permissions": False, "syscalls": False, "metadata": False},
    "shortfall_all": {"permissions": True, "syscalls": True, "metadata": True},
    "shortfall_permissions": {"permissions": True, "syscalls": False, "metadata": False},
    "shortfall_metadata": {"permissions": False, "syscalls": False, "metadata": True},
}
# The "capacity" variant: the product's training (fit_and_evaluate) with these TrainConfig fields
# changed from the defaults (latent 64, hidden 512,128, dropout 0.1, weight decay 1e-5, batch 128,
# at most 50 epochs).
CAPACITY = {
    "latent16": {"latent_dim": 16},
    "latent8_hidden256_64": {"latent_dim": 8, "hidden_dims": (256, 64)},
    "latent32_hidden256_no_dropout": {"latent_dim": 32, "hidden_dims": (256,), "dropout": 0.0},
    "latent16_hidden128_no_dropout": {"latent_dim": 16, "hidden_dims": (128,), "dropout": 0.0},
    "dropout03_weight_decay1e-4": {"dropout": 0.3, "weight_decay": 1e-4},
    "latent128_hidden1024_256": {"latent_dim": 128, "hidden_dims": (1024, 256)},
    "batch64_epochs200": {"batch_size": 64, "max_epochs": 200},
    "weight_decay1e-3": {"weight_decay": 1e-3},
}
BASELINES = ("pca", "isolation_forest", "random_forest")
TARGETS = {"month": {"roc_auc": 0.90, "tpr_at_fpr_5pct": 0.60}, "random": {"roc_auc": 0.98}}


def log(message: str) -> None:
    _log("detection", message)


def _quiet() -> None:
    quiet_lightning(logging.ERROR, ".*GPU available but not used.*")


# --------------------------------------------------------------------------- data


def load_subset(path: Path, tmp: Path):
    """The subset as the project reads it (valid rows), with ``sample_month``."""
    import shutil

    from dfp_core.kronodroid.reader import read_kronodroid

    folder = tmp / "real" / "real_device"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / path.name)
    frame, rejected = read_kronodroid(folder.parent)
    frame = frame.copy()
    frame["sample_month"] = frame["sample_date"].dt.month.astype("Int64")
    log(f"{len(frame)} valid rows ({int(frame['label'].sum())} malware), {len(rejected)} rejected; "
        f"undated {int(frame['sample_month'].isna().sum())}")
    return frame


def random_split(frame, seed: int = 42):
    from dfp_core.splits import SplitSpec, assign_split

    spec = SplitSpec(seed=seed)  # the project's default random split at seed 42
    split = np.array([assign_split(s, spec) for s in frame["sample_id"]])
    return {name: frame[split == name].reset_index(drop=True) for name in ("train", "val", "test")}


def month_split(frame, seed: int, val_fraction: float = 0.15):
    months = frame["sample_month"]
    pool = frame[(months.notna() & ~months.isin(TEST_MONTHS)).to_numpy()].reset_index(drop=True)
    test = frame[months.isin(TEST_MONTHS).fillna(False).to_numpy()].reset_index(drop=True)
    held = np.zeros(len(pool), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(pool))[: int(round(val_fraction * len(pool)))]] = True
    return {"train": pool[~held].reset_index(drop=True), "val": pool[held].reset_index(drop=True), "test": test}


# --------------------------------------------------------------------------- figures


def figures(val_scores, val_y, test_scores, test_y, target_fpr: float) -> dict:
    from dfp_core.ml import metrics as M

    threshold = M.threshold_for_fpr(val_scores, val_y, target_fpr)
    out = M.evaluate(test_scores, test_y, None, threshold, prefix="test")
    keep = ("roc_auc", "pr_auc", *(M.fpr_key(f) for f in M.REPORTED_FPRS), "precision", "recall", "f1", "fpr")
    row = {k: round(out[f"test_{k}"], 4) for k in keep if f"test_{k}" in out}
    row[M.fpr_key(STRICT_FPR)] = round(M.tpr_at_fpr(test_scores, test_y, STRICT_FPR), 4)
    # What a choice between variants may look at: the same figures on validation apps.
    row["val_roc_auc"] = round(M.evaluate(val_scores, val_y, None, threshold, prefix="val")["val_roc_auc"], 4)
    row["val_" + M.fpr_key(0.01)] = round(M.tpr_at_fpr(val_scores, val_y, 0.01), 4)
    return row


def _zscore(scores, reference):
    return (scores - reference.mean()) / (reference.std() + 1e-12)


# --------------------------------------------------------------------------- the autoencoder and its variants


class _Denoising:
    """Mixin: corrupt the input (masking noise) during training only; the target stays clean."""

    mask_rate = 0.1

    def training_step(self, batch, batch_idx):
        import torch
        from torch import nn

        from dfp_core.ml.model import batch_features

        x = batch_features(batch)
        noisy = x * (torch.rand_like(x) >= self.mask_rate)
        loss = nn.functional.mse_loss(self(noisy), x)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss


def _fit_network(cfg, train_x, val_x, seed: int, kind: str = "plain"):
    """The product's architecture and optimiser, trained with Lightning like a training run
    (early stopping on benign validation loss); ``kind`` picks a training variant."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from dfp_core.ml.data import KronodroidDataModule
    from dfp_core.ml.model import KronodroidAutoencoder

    L.seed_everything(seed, workers=True)
    bases = {"plain": (), "denoise": (_Denoising,)}[kind]
    cls = type(f"AE_{kind}", (*bases, KronodroidAutoencoder), {})
    model = cls(input_dim=train_x.shape[1], hidden_dims=cfg.hidden_dims, latent_dim=cfg.latent_dim,
                dropout=cfg.dropout, lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_y = np.zeros(len(val_x), dtype=np.int64)
    dm = KronodroidDataModule(train_x, val_x, None, np.zeros(len(train_x), dtype=np.int64), val_y,
                              train_on="benign", batch_size=cfg.batch_size, seed=seed)
    trainer = L.Trainer(max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=1, deterministic=True,
                        callbacks=[EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min")],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return model.cpu().eval()  # the variants score it with CPU tensors, wherever it trained


def _errors(model, x) -> np.ndarray:
    """Per-feature squared reconstruction errors (rows x features)."""
    import torch

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return ((model(t) - t) ** 2).numpy().astype(np.float64)


def _reconstruction(model, x) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)


def _latent(model, x) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.encoder(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)


def _mahalanobis(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    from sklearn.covariance import LedoitWolf

    fitted = LedoitWolf().fit(reference)
    return fitted.mahalanobis(points)


def _product_mahalanobis(model, x: dict, y: dict) -> dict:
    """The product's error_mahalanobis score (``fit_error_score``: benign training rows) on val and test."""
    from dfp_core.ml.fit import fit_error_score

    fitted = fit_error_score("error_mahalanobis", model, x["train"][y["train"] == 0])
    return {s: fitted.scores(model, x[s])[1] for s in ("val", "test")}


class _FlagsRawPreprocessor:
    """Binary columns (permission flags: only 0/1 seen in training) kept as 0/1; counts
    and metadata as the product does (log1p, standardise, clip)."""

    def __init__(self, features):
        from dfp_core.serving.preprocess import Preprocessor

        self.inner = Preprocessor(features)
        self.features = features

    def fit(self, frame):
        from dfp_core.serving.preprocess import feature_matrix

        self.inner.fit(frame)
        raw = feature_matrix(frame, self.features)
        self.binary = np.all(np.isin(np.nan_to_num(raw), (0.0, 1.0)), axis=0)
        return self

    def transform(self, frame):
        from dfp_core.serving.preprocess import feature_matrix

        out = self.inner.transform(frame)
        raw = np.clip(np.nan_to_num(feature_matrix(frame, self.features)), 0, 1)
        out[:, self.binary] = raw[:, self.binary].astype(np.float32)
        return out


def _grouped_terms(fitted, model, x) -> np.ndarray:
    """(rows, groups) of a fitted grouped_error score: each group's standardised term."""
    from dfp_core.serving.score import group_terms, residuals

    terms = np.concatenate([group_terms(r, fitted.groups, fitted.shortfall_only) for r in residuals(model, x, 8192)])
    return (terms - fitted.location) / fitted.scale


def run_split(name: str, frames: dict, seeds: list[int], variants: list[str], target_fpr: float,
              accelerator: str = "cpu") -> dict:
    from dfp_core.kronodroid.schema import FEATURE_COLUMNS
    from dfp_core.ml.fit import fit_and_evaluate
    from dfp_core.params import TrainConfig

    y = {s: f["label"].to_numpy(np.int64) for s, f in frames.items()}
    log(f"{name}: " + ", ".join(f"{s} {len(f)} ({int(y[s].sum())} malware)" for s, f in frames.items()))
    results: dict[str, list[dict]] = {}

    def add(method: str, val_scores, test_scores, seconds: float):
        row = figures(val_scores, y["val"], test_scores, y["test"], target_fpr)
        row["seconds"] = round(seconds, 1)
        results.setdefault(method, []).append(row)
        log(f"{name} {method}: ROC-AUC {row.get('roc_auc')}, TPR@5% {row.get('tpr_at_fpr_5pct')}, "
            f"recall {row['recall']}, FPR {row['fpr']} ({seconds:.0f}s)")

    for seed in seeds:
        cfg = TrainConfig(accelerator=accelerator, devices="1", seed=seed, target_fpr=target_fpr, register=False,
                          evaluate_baselines=False)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="dfp-bench-det-") as work:
            result = fit_and_evaluate(cfg, SimpleNamespace(frames=frames), Path(work))
        model, pre = result.model.eval(), result.preprocessor
        x = {s: pre.transform(f) for s, f in frames.items()}
        fit_seconds = time.monotonic() - started
        errs = {s: _errors(model, x[s]) for s in x}
        mse = {s: e.mean(axis=1) for s, e in errs.items()}
        if "default" in variants:  # the product's score (TrainConfig.score), and the plain MSE beside it
            add("ae_default", result.scores["val"], result.scores["test"], fit_seconds)
            add("ae_mse", mse["val"], mse["test"], fit_seconds)
        benign_train = errs["train"][y["train"] == 0]
        if "grouped" in variants:
            from dfp_core.ml.fit import feature_groups, fit_error_score

            benign_x = x["train"][y["train"] == 0]
            for label, shortfall in GROUPED.items():
                fitted = fit_error_score("grouped_error", model, benign_x, shortfall_only=shortfall)
                add(f"ae_grouped_{label}", fitted.score_function(model)(x["val"]), fitted.score_function(model)(x["test"]),
                    fit_seconds)
            product = fit_error_score("grouped_error", model, benign_x)
            terms = {s: _grouped_terms(product, model, x[s]) for s in ("val", "test")}
            add("ae_grouped_max", terms["val"].max(axis=1), terms["test"].max(axis=1), fit_seconds)
            for cap in CAPS:
                fitted = fit_error_score("grouped_error", model, benign_x, cap=cap, weakest_weight=0.0)
                label = "uncapped" if cap is None else f"cap{cap:g}"
                add(f"ae_grouped_{label}", fitted.score_function(model)(x["val"]), fitted.score_function(model)(x["test"]),
                    fit_seconds)
            for index, group in enumerate(feature_groups(FEATURE_COLUMNS)[0]):
                add(f"ae_grouped_{group}_alone", terms["val"][:, index], terms["test"][:, index], fit_seconds)
        if "weakest" in variants:
            from dfp_core.ml.fit import fit_error_score

            for cap, weight in WEAKEST:
                fitted = fit_error_score("grouped_error", model, x["train"][y["train"] == 0], cap=cap,
                                         weakest_weight=weight)
                score = fitted.score_function(model)
                add(_weakest_label(cap, weight), score(x["val"]), score(x["test"]), fit_seconds)
        if "soft_cap" in variants:
            from dfp_core.ml.fit import fit_error_score

            raw = fit_error_score("grouped_error", model, x["train"][y["train"] == 0], cap=None)
            z = {s: _grouped_terms(raw, model, x[s]) for s in ("val", "test")}
            for label, bend in SOFT_CAPS.items():
                add(f"ae_soft_cap_{label}", bend(z["val"]).sum(axis=1), bend(z["test"]).sum(axis=1), fit_seconds)
        if "std_error" in variants:  # each feature's error in units of its benign training error
            scale = benign_train.mean(axis=0) + 1e-6
            add("ae_std_error", (errs["val"] / scale).mean(axis=1), (errs["test"] / scale).mean(axis=1), fit_seconds)
        if "error_mahalanobis" in variants:  # residuals' joint distribution on benign training rows: the
            # product's score (--score error_mahalanobis), and beside it the signed residual and the sum with MSE
            maha = _product_mahalanobis(model, x, y)
            add("ae_error_mahalanobis", maha["val"], maha["test"], fit_seconds)
            signed = {s: _reconstruction(model, x[s]) - x[s] for s in x}
            ref = signed["train"][y["train"] == 0]
            add("ae_signed_error_mahalanobis", _mahalanobis(ref, signed["val"]), _mahalanobis(ref, signed["test"]),
                fit_seconds)
            benign_val = y["val"] == 0
            add("ae_mse_plus_error_mahalanobis",
                _zscore(mse["val"], mse["val"][benign_val]) + _zscore(maha["val"], maha["val"][benign_val]),
                _zscore(mse["test"], mse["val"][benign_val]) + _zscore(maha["test"], maha["val"][benign_val]),
                fit_seconds)
        if "latent_mahalanobis" in variants:  # density of the code: a Gaussian fit on benign training codes
            codes = {s: _latent(model, x[s]) for s in x}
            ref = codes["train"][y["train"] == 0]
            dist = {s: _mahalanobis(ref, c) for s, c in codes.items()}
            add("ae_latent_mahalanobis", dist["val"], dist["test"], fit_seconds)
            add("ae_mse_plus_latent", _zscore(mse["val"], mse["val"][y["val"] == 0])
                + _zscore(dist["val"], dist["val"][y["val"] == 0]),
                _zscore(mse["test"], mse["val"][y["val"] == 0]) + _zscore(dist["test"], dist["val"][y["val"] == 0]),
                fit_seconds)
        benign_x = x["train"][y["train"] == 0]
        if "denoise" in variants:
            started = time.monotonic()
            net = _fit_network(cfg, benign_x, x["val"][y["val"] == 0], seed, "denoise")
            add("ae_denoise", _errors(net, x["val"]).mean(axis=1), _errors(net, x["test"]).mean(axis=1),
                time.monotonic() - started)
            from dfp_core.ml.fit import fit_error_score

            grouped = fit_error_score("grouped_error", net, benign_x).score_function(net)
            add("ae_denoise_grouped", grouped(x["val"]), grouped(x["test"]), time.monotonic() - started)
        if "flags_raw" in variants:
            started = time.monotonic()
            benign_frame = frames["train"][y["train"] == 0]
            pre_flags = _FlagsRawPreprocessor(FEATURE_COLUMNS).fit(benign_frame)
            xf = {s: pre_flags.transform(f) for s, f in frames.items()}
            net = _fit_network(cfg, xf["train"][y["train"] == 0], xf["val"][y["val"] == 0], seed)
            errs_f = {s: _errors(net, xf[s]) for s in xf}
            add("ae_flags_raw", errs_f["val"].mean(axis=1), errs_f["test"].mean(axis=1), time.monotonic() - started)
            if "error_mahalanobis" in variants:  # the two ideas together
                maha_f = _product_mahalanobis(net, xf, y)
                add("ae_flags_raw_error_mahalanobis", maha_f["val"], maha_f["test"], time.monotonic() - started)
        if "semi_supervised" in variants:  # dfp train --train-on semi, both scores (reported apart)
            for score in ("mse", "error_mahalanobis", "grouped_error"):
                started = time.monotonic()
                semi_cfg = dataclasses.replace(cfg, train_on="semi", score=score)
                with tempfile.TemporaryDirectory(prefix="dfp-bench-det-") as work:
                    semi = fit_and_evaluate(semi_cfg, SimpleNamespace(frames=frames), Path(work))
                add(f"semi_supervised_ae_{score}", semi.scores["val"], semi.scores["test"],
                    time.monotonic() - started)
        if "capacity" in variants:  # smaller and larger codes, shallower nets, more regularisation
            for label, fields in CAPACITY.items():
                started = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="dfp-bench-det-") as work:
                    other = fit_and_evaluate(dataclasses.replace(cfg, **fields), SimpleNamespace(frames=frames),
                                             Path(work))
                seconds = time.monotonic() - started
                add(f"ae_{label}", other.scores["val"], other.scores["test"], seconds)
                net, ox = other.model.eval(), {s: other.preprocessor.transform(frames[s]) for s in ("val", "test")}
                add(f"ae_{label}_mse", _errors(net, ox["val"]).mean(axis=1), _errors(net, ox["test"]).mean(axis=1),
                    seconds)
        if "ensemble5" in variants and seed == seeds[0]:  # five seeds, scores z-scored on benign validation
            started = time.monotonic()
            val_sum, test_sum = np.zeros(len(x["val"])), np.zeros(len(x["test"]))
            for member in range(5):
                net = model if member == 0 else _fit_network(cfg, benign_x, x["val"][y["val"] == 0], seed + 100 * member)
                v, t = _errors(net, x["val"]).mean(axis=1), _errors(net, x["test"]).mean(axis=1)
                ref = v[y["val"] == 0]
                val_sum, test_sum = val_sum + _zscore(v, ref), test_sum + _zscore(t, ref)
            add("ae_ensemble5", val_sum, test_sum, time.monotonic() - started + fit_seconds)

        # The baselines as `dfp evaluate` fits them (benign training rows; RF: all of them), on the
        # autoencoder's preprocessing; "seconds" is the time of all three.
        import pandas as pd

        from dfp_core.ml.evaluation import method_scores

        started = time.monotonic()
        scored = method_scores(result.error_score.score_function(model), pre, frames["train"], pd.concat([frames["val"], frames["test"]], ignore_index=True),
                               seed=seed)
        seconds = time.monotonic() - started
        for method in BASELINES:
            add(method, scored[method][: len(x["val"])], scored[method][len(x["val"]):], seconds)

    return {"rows": {s: int(len(f)) for s, f in frames.items()},
            "malware": {s: int(y[s].sum()) for s in frames}, "runs": results}


def _weakest_label(cap: float | None, weight: float) -> str:
    return f"ae_weakest_cap{'none' if cap is None else f'{cap:g}'}_weight{weight:g}"


def chosen_on_validation(out: dict, splits: list[str]) -> list[dict]:
    """The "weakest" variant's pairs, best first by validation TPR at 1% FPR: each split
    kind's mean over its partitions, then the mean over the kinds (test figures unused)."""
    ranked = []
    for cap, weight in WEAKEST:
        label, per_kind = _weakest_label(cap, weight), {}
        for split in splits:
            runs = [v["methods"][label] for k, v in out.items()
                    if k.split("@")[0] == split and isinstance(v, dict) and label in v.get("methods", {})]
            per_kind[split] = round(statistics.mean(r["val_tpr_at_fpr_1pct"] for r in runs), 4)
        ranked.append({"cap": cap, "weakest_weight": weight, "val_tpr_at_fpr_1pct": per_kind,
                       "pooled": round(statistics.mean(per_kind.values()), 4)})
    return sorted(ranked, key=lambda r: -r["pooled"])


def summarise(parts: list[dict]) -> dict:
    """One split's summary from its runs (one part per seed, or one for all): each
    method's figures averaged over its runs."""
    runs: dict[str, list[dict]] = {}
    for part in parts:
        for method, rows in part["runs"].items():
            runs.setdefault(method, []).extend(rows)
    summary = {"rows": parts[0]["rows"], "malware": parts[0]["malware"], "methods": {},
               "seconds": round(sum(part["seconds"] for part in parts), 1)}
    for method, rows in runs.items():
        summary["methods"][method] = {key: round(statistics.mean(r[key] for r in rows), 4)
                                      for key in rows[0] if all(key in r for r in rows)}
        summary["methods"][method]["runs"] = len(rows)
    return summary


def _timed_split(key: str, frames: dict, seeds: list[int], variants: list[str], target_fpr: float,
                 accelerator: str) -> dict:
    started = time.monotonic()
    part = run_split(key, frames, seeds, variants, target_fpr, accelerator)
    return {**part, "seeds": seeds, "seconds": time.monotonic() - started}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _quiet()


def run_tasks(tasks: dict, seeds: list[int], variants: list[str], args) -> dict:
    """Each split's summary by key: in this process (``--jobs 1``) or in a pool of
    ``args.jobs`` processes sharing the CPU threads, one split and seed per task. The
    seeds finished so far are written to ``results/detection_partial.json`` as they come."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    parts: dict[str, list[dict]] = {key: [] for key in tasks}

    def finished(key: str, part: dict) -> None:
        parts[key].append(part)
        log(f"{key}: {sum(len(p['seeds']) for p in parts[key])} of {len(seeds)} seeds done ({part['seconds']:.0f} s)")
        RESULTS.mkdir(parents=True, exist_ok=True)  # quietly: save() prints, and the last line is the summary
        partial = {k: summarise(p) for k, p in parts.items() if p}
        (RESULTS / "detection_partial.json").write_text(json.dumps({"seeds": seeds, **partial}, indent=2))

    if args.jobs == 1:
        for key, frames in tasks.items():
            finished(key, _timed_split(key, frames, seeds, variants, args.target_fpr, args.accelerator))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            # Seed by seed, so that a run cut short has every split of the first seeds; ensemble5
            # runs for the first seed only, as in one process.
            futures = {pool.submit(_timed_split, key, frames, [seed],
                                   [v for v in variants if v != "ensemble5" or seed == seeds[0]],
                                   args.target_fpr, args.accelerator): key
                       for seed in seeds for key, frames in tasks.items()}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    return {key: summarise(p) for key, p in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=REAL_SUBSET)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--splits", default="random,month")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--split-seeds", default="",
                        help="comma-separated: also run each split again per seed (random: SplitSpec.seed; month: "
                             "the seed of the validation rows), reported as random@K / month@K")
    parser.add_argument("--skip-default-split", action="store_true",
                        help="run only the --split-seeds partitions (e.g. to choose on partitions never reported)")
    parser.add_argument("--jobs", type=int, default=1, help="splits run in this many processes at once")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"), help="where the networks train")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if not args.input.is_file():
        log(f"the real KronoDroid subset is not at {args.input}: skipped, nothing measured")
        print(json.dumps({"skipped": f"no input at {args.input}"}))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    _quiet()
    out: dict = {"input": args.input.name, "seeds": seeds, "target_fpr": args.target_fpr, "targets": TARGETS,
                 "accelerator": args.accelerator, "jobs": args.jobs}
    splits = [v for v in args.splits.split(",") if v]
    unknown = sorted(set(splits) - {"random", "month"})
    if unknown:
        parser.error(f"unknown split(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="dfp-bench-detection-") as tmp:
        frame = load_subset(args.input, Path(tmp))
        split_seeds = [*([] if args.skip_default_split else [None]), *(int(k) for k in args.split_seeds.split(",") if k)]
        if not split_seeds:
            parser.error("--skip-default-split needs --split-seeds")
        tasks = {}
        for split in splits:
            for split_seed in split_seeds:
                key = split if split_seed is None else f"{split}@{split_seed}"
                if split == "random":
                    tasks[key] = random_split(frame, 42 if split_seed is None else split_seed)
                else:
                    tasks[key] = month_split(frame, 0 if split_seed is None else split_seed)
        done = run_tasks(tasks, seeds, variants, args)
        for key in tasks:  # in task order, whatever order they finished in
            out[key] = done[key]
            if key.split("@")[0] == "month":
                out[key].update(train_months="1-9", test_months="10-12")
        if len(split_seeds) > 1:  # each method's mean over the split seeds (the default split included)
            for split in splits:
                runs = [out[k]["methods"] for k in out if k == split or k.startswith(f"{split}@")]
                out[f"{split}_over_split_seeds"] = {
                    method: {key: round(statistics.mean(r[method][key] for r in runs), 4)
                             for key in ("roc_auc", "tpr_at_fpr_5pct")}
                    for method in runs[0]}
    if "weakest" in variants:
        out["chosen_on_validation"] = chosen_on_validation(out, splits)
        best = out["chosen_on_validation"][0]
        log(f"chosen on validation: cap {best['cap']}, weakest weight {best['weakest_weight']} "
            f"(validation TPR at 1% FPR {best['pooled']})")
    save("detection", out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
