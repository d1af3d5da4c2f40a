"""Feature preprocessing fitted on the train split only (part of the model: the
registered scorer applies it to every input).

Per feature: impute NaN (and +/-inf) with the train median, clip negatives to
0, ``log1p`` (every feature is a non-negative count, flag or byte size), then
standardise with the train mean/std. Columns whose train std is below the
floor (constant columns) map to 0 for every input. Fully deterministic; the
fitted state round-trips through JSON exactly (floats are written with
``repr`` precision).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dfp_core.errors import DatasetError, listed

STD_FLOOR = 1e-6
FORMAT_VERSION = 1


def check_feature_columns(df: pd.DataFrame, features: Sequence[str]) -> None:
    """Raises DatasetError unless ``df`` is a DataFrame with every column of ``features``."""
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise DatasetError(f"missing feature columns: {listed(missing)}")


def feature_matrix(df: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The feature columns of ``df`` as a float64 matrix, in ``features`` order.

    Raises DatasetError naming missing or non-numeric columns.
    """
    check_feature_columns(df, features)
    try:
        return df.loc[:, list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        bad = [c for c in features if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
        raise DatasetError(f"non-numeric feature columns: {', '.join(bad[:10]) or '(unknown)'}") from None


# Standardised values are clipped to +-Z_CLIP: a permission or syscall almost
# never seen in training has a tiny std, and its unclipped z-score would
# dominate the reconstruction error of any app that has it (ROC-AUC on the real
# KronoDroid subset: 0.928 unclipped vs 0.962 clipped, same model).
Z_CLIP = 5.0


# Working-copy sizes: float64 slices of (rows x FIT_CHUNK_COLUMNS) in fit and of
# (TRANSFORM_CHUNK_ROWS x features) in transform. Results do not depend on them.
FIT_CHUNK_COLUMNS = 64
TRANSFORM_CHUNK_ROWS = 16_384


def _finite_or_nan(raw: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(raw), raw, np.nan)


def _impute_log(raw: np.ndarray, medians: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(raw), medians, raw)
    return np.log1p(np.clip(filled, 0.0, None))


class Preprocessor:
    """Median imputation -> clip(>=0) -> log1p -> standardisation -> clip(+-z_clip)."""

    def __init__(self, features: Sequence[str], std_floor: float = STD_FLOOR, z_clip: float | None = Z_CLIP):
        self.features: tuple[str, ...] = tuple(features)
        if not self.features:
            raise DatasetError("Preprocessor needs at least one feature column")
        if len(set(self.features)) != len(self.features):
            raise DatasetError("Preprocessor feature names are not unique")
        self.std_floor = float(std_floor)
        self.z_clip = None if z_clip is None else float(z_clip)
        self.medians: np.ndarray | None = None
        self.means: np.ndarray | None = None
        self.stds: np.ndarray | None = None

    # -- fitting -----------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.medians is not None

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def constant_mask(self) -> np.ndarray:
        """True for columns that were constant on the train split (they map to 0)."""
        self._check_fitted()
        return self.stds <= self.std_floor

    def fit(self, df: pd.DataFrame) -> "Preprocessor":
        """Fit on the TRAIN split only. Column statistics are computed a slice of columns at a
        time: float64 working copies of that slice, not of the whole split."""
        check_feature_columns(df, self.features)
        if len(df) == 0:
            raise DatasetError("cannot fit the preprocessor on an empty train split")
        medians, means, stds = [], [], []
        for start in range(0, self.n_features, FIT_CHUNK_COLUMNS):
            columns = self.features[start:start + FIT_CHUNK_COLUMNS]
            raw = _finite_or_nan(feature_matrix(df, columns))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: median 0 below
                chunk_medians = np.nanmedian(raw, axis=0)
            chunk_medians = np.where(np.isfinite(chunk_medians), chunk_medians, 0.0)
            logged = _impute_log(raw, chunk_medians)
            medians.append(chunk_medians)
            means.append(logged.mean(axis=0))
            stds.append(logged.std(axis=0))
        self.medians = np.concatenate(medians)
        self.means = np.concatenate(means)
        self.stds = np.maximum(np.concatenate(stds), self.std_floor)
        return self

    # -- transform ---------------------------------------------------------------
    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """The preprocessed features as float32 ``(n_rows, n_features)``."""
        self._check_fitted()
        check_feature_columns(df, self.features)
        # Row-major: a DataLoader batches rows, and strided rows make every batch a gather.
        out = np.empty((len(df), self.n_features), dtype=np.float32)
        # A slice of rows at a time: the float64 working copy is of the slice, not the split.
        for start in range(0, len(df), TRANSFORM_CHUNK_ROWS):
            chunk = feature_matrix(df.iloc[start:start + TRANSFORM_CHUNK_ROWS], self.features)
            out[start:start + len(chunk)] = self._standardise(chunk)
        return out

    def transform_matrix(self, raw: np.ndarray) -> np.ndarray:
        """``transform`` of a float64 ``(n_rows, n_features)`` matrix whose columns are
        ``features`` in order, without a DataFrame (the scoring server's path). ``raw`` is
        overwritten."""
        self._check_fitted()
        if not isinstance(raw, np.ndarray) or raw.dtype != np.float64 or raw.ndim != 2 \
                or raw.shape[1] != self.n_features:
            raise DatasetError(f"expected a float64 matrix of {self.n_features} feature columns, got "
                               f"{getattr(raw, 'dtype', type(raw).__name__)} {getattr(raw, 'shape', '')}")
        out = np.empty(raw.shape, dtype=np.float32)
        for start in range(0, len(raw), TRANSFORM_CHUNK_ROWS):
            chunk = raw[start:start + TRANSFORM_CHUNK_ROWS]
            out[start:start + len(chunk)] = self._standardise(chunk)
        return out

    def _standardise(self, chunk: np.ndarray) -> np.ndarray:
        """The fitted steps on a float64 slice, in place (and returned): the same float64
        operations as fit's (``_finite_or_nan``, ``_impute_log``), so a non-finite value
        (NaN, +-inf) takes the median."""
        np.copyto(chunk, np.broadcast_to(self.medians, chunk.shape), where=~np.isfinite(chunk))
        np.clip(chunk, 0.0, None, out=chunk)
        np.log1p(chunk, out=chunk)
        chunk -= self.means
        chunk /= self.stds
        if self.z_clip is not None:
            np.clip(chunk, -self.z_clip, self.z_clip, out=chunk)
        chunk[:, self.constant_mask] = 0.0
        return chunk

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise DatasetError("the preprocessor is not fitted; call fit() on the train split first")

    # -- persistence -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "steps": ["impute_median", "clip_min_0", "log1p", "standardize", "clip_z"],
            "std_floor": self.std_floor,
            "z_clip": self.z_clip,
            "features": list(self.features),
            "medians": [float(v) for v in self.medians],
            "means": [float(v) for v in self.means],
            "stds": [float(v) for v in self.stds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessor":
        try:
            features = list(data["features"])
            obj = cls(features, std_floor=float(data.get("std_floor", STD_FLOOR)), z_clip=data.get("z_clip"))
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("medians", "means", "stds")}
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"invalid preprocessor state: {exc}") from None
        for key, arr in arrays.items():
            if arr.shape != (len(features),) or not np.all(np.isfinite(arr)):
                raise DatasetError(f"invalid preprocessor state: {key!r} must be {len(features)} finite numbers")
        obj.medians, obj.means, obj.stds = arrays["medians"], arrays["means"], arrays["stds"]
        return obj

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessor":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read preprocessor file {path}: {exc}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        state = "fitted" if self.is_fitted else "unfitted"
        return f"Preprocessor({self.n_features} features, {state})"
