"""Lightning data module over already-preprocessed float32 arrays.

``train_on="benign"`` (default) is the anomaly-detection setting: the train and
validation losses are computed on benign rows (label 0) only; the test loader
serves every row. ``train_on="all"`` uses every row everywhere. ``train_on="semi"``
(semi-supervised) trains on every row, its batches carrying the labels ``(x, y)`` so
the model can push the labelled malware away; validation stays benign-only.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from dfp_core.errors import DatasetError

TrainOn = Literal["benign", "all", "semi"]


def _as_features(name: str, x, n_features: int | None) -> np.ndarray:
    if x is None:
        raise DatasetError(f"the {name} split is missing")
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DatasetError(f"the {name} split must be 2-D (rows, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"the {name} split is empty: no rows to {'train on' if name == 'train' else 'evaluate'}")
    if n_features is not None and arr.shape[1] != n_features:
        raise DatasetError(f"the {name} split has {arr.shape[1]} features, the train split {n_features}")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"the {name} split has NaN/inf values: preprocess it first")
    return arr


def _as_labels(name: str, y, n_rows: int, required_by: str | None) -> np.ndarray | None:
    """The labels as int64 0/1; ``required_by``: the train_on mode that needs them (None: optional)."""
    if y is None:
        if required_by:
            raise DatasetError(f"train_on={required_by!r} needs labels for the {name} split")
        return None
    arr = np.asarray(y).reshape(-1)
    if arr.shape[0] != n_rows:
        raise DatasetError(f"the {name} split has {n_rows} rows but {arr.shape[0]} labels")
    if not np.isin(arr, (0, 1)).all():
        raise DatasetError(f"the {name} labels must be 0 (benign) or 1 (malware)")
    return arr.astype(np.int64)


class KronodroidDataModule(L.LightningDataModule):
    """Train/val/test loaders over preprocessed arrays, with seeded shuffling."""

    def __init__(
        self,
        train_x: np.ndarray,
        val_x: np.ndarray,
        test_x: np.ndarray | None = None,
        train_y: np.ndarray | None = None,
        val_y: np.ndarray | None = None,
        test_y: np.ndarray | None = None,
        *,
        train_on: TrainOn = "benign",
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if train_on not in ("benign", "all", "semi"):
            raise ValueError(f"train_on must be 'benign', 'all' or 'semi', got {train_on!r}")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        self.train_on = train_on
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)

        benign_only, labelled = train_on == "benign", train_on == "semi"
        tx = _as_features("train", train_x, None)
        self.n_features = tx.shape[1]
        vx = _as_features("val", val_x, self.n_features)
        needs_labels = None if train_on == "all" else train_on
        ty = _as_labels("train", train_y, len(tx), needs_labels)
        vy = _as_labels("val", val_y, len(vx), needs_labels)
        if benign_only:
            tx = self._benign(tx, ty, "train")
        if benign_only or labelled:
            vx = self._benign(vx, vy, "val")
        self.train_x, self.val_x = tx, vx
        self.train_y = ty if labelled else None  # the labels the semi-supervised loss needs
        self.test_x = None if test_x is None else _as_features("test", test_x, self.n_features)
        self.test_y = None if self.test_x is None else _as_labels("test", test_y, len(self.test_x), None)

    def _benign(self, x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
        mask = y == 0
        if not mask.any():
            raise DatasetError(
                f"the {name} split has no benign rows (label 0), and train_on={self.train_on!r} needs some; "
                "check the split or use train_on='all'"
            )
        return x[mask]

    @property
    def n_train(self) -> int:
        return len(self.train_x)

    @property
    def n_val(self) -> int:
        return len(self.val_x)

    def _loader(self, x: np.ndarray, shuffle: bool, generator: torch.Generator | None = None,
                y: np.ndarray | None = None) -> DataLoader:
        tensors = (torch.from_numpy(x),) if y is None else (torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(
            TensorDataset(*tensors),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # A fresh generator per call: every fit with the same seed sees the same
        # sequence of epoch permutations.
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_x, shuffle=True, generator=generator, y=self.train_y)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_x, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_x is None:
            raise DatasetError("no test split was given to the data module")
        return self._loader(self.test_x, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
