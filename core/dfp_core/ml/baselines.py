"""Classical baselines on the same preprocessed arrays as the autoencoder.

Unsupervised (fit on the autoencoder's training rows, benign by default):
PCA reconstruction error and IsolationForest. Supervised ceiling (fit on every
labelled training row): a RandomForest's malware probability. Every score is
"higher = more likely malware" and deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from dfp_core.errors import DatasetError

PCA_COMPONENTS = 16
IFOREST_TREES = 200
RF_TREES = 100
RF_MAX_DEPTH = 32  # deep enough for ~100k rows, bounded in size
RF_MIN_SAMPLES_LEAF = 2


def _arrays(train_x, eval_x) -> tuple[np.ndarray, np.ndarray]:
    tx = np.asarray(train_x, dtype=np.float32)
    ex = np.asarray(eval_x, dtype=np.float32)
    if tx.ndim != 2 or ex.ndim != 2 or tx.shape[1] != ex.shape[1]:
        raise DatasetError(f"train and eval arrays must be 2-D with equal widths, got {tx.shape} and {ex.shape}")
    if tx.shape[0] == 0:
        raise DatasetError("no training rows for the baseline")
    if not (np.isfinite(tx).all() and np.isfinite(ex).all()):
        raise DatasetError("baseline inputs have NaN/inf values: preprocess them first")
    return tx, ex


def pca_errors(train_x: np.ndarray, eval_x: np.ndarray, n_components: int = PCA_COMPONENTS, seed: int = 0) -> np.ndarray:
    """Per-row mean squared error of ``eval_x`` reconstructed from the top
    ``n_components`` principal components of ``train_x`` (capped by its shape)."""
    # Deferred (scikit-learn): only the baseline that runs.
    from sklearn.decomposition import PCA

    tx, ex = _arrays(train_x, eval_x)
    k = max(1, min(int(n_components), tx.shape[0], tx.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(tx)
    recon = pca.inverse_transform(pca.transform(ex))
    return np.mean((recon - ex) ** 2, axis=1, dtype=np.float64)


def isolation_forest_scores(train_x: np.ndarray, eval_x: np.ndarray, seed: int = 0,
                            n_estimators: int = IFOREST_TREES) -> np.ndarray:
    """IsolationForest anomaly score (``-score_samples``: higher = more anomalous)."""
    # Deferred (scikit-learn): only the baseline that runs.
    from sklearn.ensemble import IsolationForest

    tx, ex = _arrays(train_x, eval_x)
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=-1).fit(tx)
    return -forest.score_samples(ex).astype(np.float64)


def random_forest_scores(train_x_all: np.ndarray, train_y_all: np.ndarray, eval_x: np.ndarray, seed: int = 0,
                         n_estimators: int = RF_TREES, max_depth: int | None = RF_MAX_DEPTH) -> np.ndarray:
    """Supervised ceiling: P(malware) from a RandomForest fit on every labelled train row."""
    # Deferred (scikit-learn): only the baseline that runs.
    from sklearn.ensemble import RandomForestClassifier

    tx, ex = _arrays(train_x_all, eval_x)
    y = np.asarray(train_y_all).reshape(-1)
    if y.shape[0] != tx.shape[0]:
        raise DatasetError(f"{tx.shape[0]} train rows but {y.shape[0]} labels")
    if not np.isin(y, (0, 1)).all() or np.unique(y).size != 2:
        raise DatasetError("the RandomForest baseline needs labels 0 and 1, both present in the train rows")
    forest = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=RF_MIN_SAMPLES_LEAF,
        n_jobs=-1, random_state=seed,
    ).fit(tx, y.astype(np.int64))
    # Parallel predict_proba sums the trees in thread order (last-bit noise): predict serially.
    forest.set_params(n_jobs=1)
    return forest.predict_proba(ex)[:, list(forest.classes_).index(1)].astype(np.float64)
