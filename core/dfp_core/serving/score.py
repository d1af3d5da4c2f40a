"""The anomaly score of an app, from the autoencoder's reconstruction of it.

- ``grouped_error`` (the default): the features fall into groups (permission flags,
  syscall counts, APK metadata); per group, the mean squared error over its features,
  standardised by the mean and std of that term on the benign training apps; the score
  is the sum over groups (0 for the benign training apps on average; it can be
  negative). So the 21 metadata features weigh as much as the 289 syscall counts, and
  a group can count its shortfalls only (the reconstruction above the input: a
  permission or size the app's other features lead the model to expect but the app
  lacks). Benign apps with rare, harmless permissions overshoot their
  reconstruction; counting shortfalls only for permissions and metadata keeps them from
  outranking malware. On the real subset (``bench/detection.py``) this lifts the random
  split's ROC-AUC from 0.962 (MSE) to 0.988 and the month split's TPR at 5% FPR from 0.18
  to 0.93. Each group's standardised term is capped (``cap``, in benign standard
  deviations): one group can add at most that much. And the smallest of the three terms
  counts ``1 + weakest_weight`` times where it is above 0: malware stands out in all three
  groups, later benign apps with a few extreme syscall counts in one. Together they lift
  the TPR at 1% FPR on later apps from 0.08 to about 0.67 (``bench/README.md``, issue 32).
- ``error_mahalanobis``: the squared Mahalanobis distance of the app's vector of
  absolute per-feature errors from those of the benign training apps (Ledoit-Wolf
  shrunk covariance).
- ``mse``: the mean squared reconstruction error over the features.

All are computed in float64 from the network's float32 output; the reconstruction error
is returned beside the score either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dfp_core.errors import DatasetError

# The scores implemented here; TrainConfig.score offers these (a unit test keeps them equal).
SCORES = ("grouped_error", "error_mahalanobis", "mse")
# The fitted arrays of each score, as saved in error_score.pt.
STATE = {"mse": (), "error_mahalanobis": ("location", "precision"),
         "grouped_error": ("groups", "shortfall_only", "location", "scale")}
# Fitted arrays a score may lack: versions saved before them score as they always did.
OPTIONAL_STATE = {"grouped_error": ("cap", "weakest_weight")}


def residuals(network: torch.nn.Module, x: np.ndarray, batch_size: int):
    """(reconstruction minus input, per feature, float64) per chunk of ``x``, in eval mode."""
    was_training = network.training
    network.eval()
    try:
        device = next(network.parameters()).device
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size]), dtype=torch.float32)
                chunk = chunk.to(device)
                yield (network(chunk) - chunk).cpu().numpy().astype(np.float64)
    finally:
        network.train(was_training)


def absolute_errors(network: torch.nn.Module, x: np.ndarray, batch_size: int):
    """(absolute per-feature errors, float64) per chunk of ``x``, in eval mode."""
    for residual in residuals(network, x, batch_size):
        yield np.abs(residual)


def group_terms(residual: np.ndarray, groups: np.ndarray, shortfall_only: np.ndarray) -> np.ndarray:
    """(rows, groups): per group, the mean squared residual over its features (``groups[j]``
    is feature j's group); where ``shortfall_only``, only residuals above 0 count."""
    terms = np.empty((len(residual), len(shortfall_only)))
    for group, shortfall in enumerate(shortfall_only):
        part = residual[:, groups == group]
        if shortfall:
            part = np.clip(part, 0.0, None)
        terms[:, group] = (part ** 2).mean(axis=1)
    return terms


class Explained(NamedTuple):
    """``ErrorScore.explained``'s arrays, one row per app."""

    errors: np.ndarray  # the reconstruction error (mean squared)
    scores: np.ndarray  # the anomaly score
    top_features: np.ndarray  # (rows, top): feature indices, largest contribution first
    top_contributions: np.ndarray  # (rows, top): their contributions, in the score's units
    group_contributions: np.ndarray  # (rows, groups): each group's contribution; they add up to the score


class ErrorScore:
    """How reconstruction errors become a score: the kind and its arrays fitted on the
    benign training apps in training (``dfp_core.ml.fit.fit_error_score``):
    - ``error_mahalanobis``: ``location`` and ``precision`` of their absolute error vectors;
    - ``grouped_error``: each feature's group (``groups``), which groups count shortfalls
      only (``shortfall_only``), the ``location`` and ``scale`` of each group's term, the
      ``cap`` on each group's standardised term (none where absent), and ``weakest_weight``:
      the score is the sum of the (capped) standardised terms plus this many times the
      smallest of them where that is above 0 (none where absent)."""

    def __init__(self, kind: str, **state: np.ndarray):
        if kind not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")
        missing = [name for name in STATE[kind] if state.get(name) is None]
        if missing:
            raise ValueError(f"{kind} needs the {' and '.join(missing)} fitted on the benign errors")
        unknown = sorted(set(state) - set(STATE[kind]) - set(OPTIONAL_STATE.get(kind, ())))
        if unknown:
            raise ValueError(f"{kind} has no {', '.join(unknown)}")
        self.kind = kind
        self.location = self.precision = self.groups = self.shortfall_only = self.scale = self.cap = None
        self.weakest_weight = None
        if kind == "error_mahalanobis":
            self.location = np.asarray(state["location"], np.float64)
            self.precision = np.asarray(state["precision"], np.float64)
            if self.location.ndim != 1 or self.precision.shape != (self.location.size, self.location.size):
                raise ValueError(f"location {self.location.shape} and precision {self.precision.shape} do not match")
        elif kind == "grouped_error":
            self.groups = np.asarray(state["groups"], np.int64)
            self.shortfall_only = np.asarray(state["shortfall_only"], bool)
            self.location = np.asarray(state["location"], np.float64)
            self.scale = np.asarray(state["scale"], np.float64)
            if state.get("cap") is not None:
                self.cap = np.asarray(state["cap"], np.float64).reshape(())
                if not self.cap > 0:
                    raise ValueError(f"the cap on a group's term must be positive, got {float(self.cap)}")
            if state.get("weakest_weight") is not None:
                self.weakest_weight = np.asarray(state["weakest_weight"], np.float64).reshape(())
                if not self.weakest_weight >= 0:
                    raise ValueError(f"the weakest group's weight must be 0 or more, got {float(self.weakest_weight)}")
            n_groups = self.shortfall_only.size
            if (self.groups.ndim != 1 or self.location.shape != (n_groups,) or self.scale.shape != (n_groups,)
                    or set(np.unique(self.groups)) != set(range(n_groups)) or not np.all(self.scale > 0)):
                raise ValueError(f"groups {self.groups.shape} (of {n_groups}), location {self.location.shape} and "
                                 f"scale {self.scale.shape} do not match, or a group is empty or a scale not positive")

    @property
    def n_features(self) -> int | None:
        """The feature count the score was fitted on (None for ``mse``)."""
        if self.groups is not None:
            return self.groups.size
        return None if self.location is None else self.location.size

    def scores(self, network: torch.nn.Module, x: np.ndarray, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction error, score) of each row of the preprocessed ``x``, float64."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D (rows, features) input, got shape {x.shape}")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise DatasetError(f"the score was fitted on {self.n_features} features, got {x.shape[1]}")
        errors, scores = [np.empty(0)], [np.empty(0)]
        for residual in residuals(network, x, batch_size):
            mse, score = self._chunk_scores(residual)
            errors.append(mse)
            scores.append(score)
        return np.concatenate(errors), np.concatenate(scores)

    def _chunk_scores(self, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mse = (residual ** 2).mean(axis=1)
        if self.kind == "error_mahalanobis":
            centred = np.abs(residual) - self.location
            return mse, np.einsum("ij,ij->i", centred @ self.precision, centred)
        if self.kind == "grouped_error":
            z = self._standardised(group_terms(residual, self.groups, self.shortfall_only))
            score = z.sum(axis=1)
            return mse, score if self.weakest_weight is None else score + self._weakest_bonus(z)
        return mse, mse

    def _standardised(self, terms: np.ndarray) -> np.ndarray:
        """(rows, groups): each group's term in benign standard deviations, capped where a cap was fitted."""
        return self._capped((terms - self.location) / self.scale)

    def _capped(self, z: np.ndarray) -> np.ndarray:
        return z if self.cap is None else np.minimum(z, self.cap)

    def _weakest_bonus(self, z: np.ndarray) -> np.ndarray:
        """(rows,): what the weakest group adds to the sum of the (capped) standardised terms:
        ``weakest_weight`` times the smallest of them where it is above 0, i.e. where the app
        stands out in every group; 0 elsewhere."""
        return self.weakest_weight * np.maximum(z.min(axis=1), 0.0)

    def _weights(self, z: np.ndarray) -> np.ndarray:
        """(rows, groups): how many times each (capped) standardised term counts in the score:
        once, and the smallest (the first of equals) ``weakest_weight`` times more where
        ``_weakest_bonus`` adds it."""
        weights = np.ones_like(z)
        if self.weakest_weight is not None and z.size:
            gains = self._weakest_bonus(z) > 0
            weights[np.arange(len(z))[gains], np.argmin(z, axis=1)[gains]] += self.weakest_weight
        return weights

    def contributions(self, residual: np.ndarray) -> np.ndarray:
        """(rows, features): each feature's signed share of the ``grouped_error`` score, in the
        score's units: its squared residual (shortfalls only where its group says so) over its
        group's size and scale, less an equal share of its group's benign location. A group's
        shares add up to its standardised term, and all of them to the score. Where a group's
        term is above the cap, its shares are scaled down in proportion to add up to the cap;
        the weakest group's shares count as often as its term does in the score."""
        if self.kind != "grouped_error":
            raise DatasetError(f"a {self.kind} score has no per-feature terms to explain it by")
        part = np.where(self.shortfall_only[self.groups], np.clip(residual, 0.0, None), residual)
        size = np.bincount(self.groups, minlength=self.shortfall_only.size)[self.groups]
        shares = (part ** 2 - self.location[self.groups]) / (size * self.scale[self.groups])
        if self.cap is None and self.weakest_weight is None:
            return shares
        z = (group_terms(residual, self.groups, self.shortfall_only) - self.location) / self.scale
        capped = self._capped(z)
        cut = z > capped  # only above a cap, which is > 0
        factor = np.where(cut, capped / np.where(cut, z, 1.0), 1.0) * self._weights(capped)
        return shares * factor[:, self.groups]

    def explained(self, network: torch.nn.Module, x: np.ndarray, top: int, batch_size: int = 8192) -> Explained:
        """``scores`` (the same bits) with, per row, the ``top`` features that added most to
        the score (indices and contributions, largest first) and each group's contribution
        (they add up to the score); memory bounded by ``batch_size`` rows of terms."""
        if self.kind != "grouped_error":
            raise DatasetError(f"a {self.kind} score has no per-feature terms to explain it by")
        if not 1 <= top <= self.n_features:
            raise ValueError(f"top must be between 1 and {self.n_features}, got {top}")
        parts = []
        for residual in residuals(network, np.asarray(x), batch_size):
            mse, score = self._chunk_scores(residual)
            terms = self.contributions(residual)
            index = np.argpartition(-terms, top - 1, axis=1)[:, :top]
            values = np.take_along_axis(terms, index, axis=1)
            order = np.argsort(-values, axis=1, kind="stable")
            groups = np.stack([terms[:, self.groups == g].sum(axis=1) for g in range(self.shortfall_only.size)], axis=1)
            parts.append((mse, score, np.take_along_axis(index, order, axis=1),
                          np.take_along_axis(values, order, axis=1), groups))
        if not parts:
            n_groups = self.shortfall_only.size
            return Explained(np.empty(0), np.empty(0), np.empty((0, top), np.int64), np.empty((0, top)),
                             np.empty((0, n_groups)))
        return Explained(*(np.concatenate(column) for column in zip(*parts)))

    def described(self) -> str:
        """What this version's fitted state adds to the score's general words (the model's
        description): the cap and the weakest group's weight; empty where it has neither."""
        parts = []
        if self.cap is not None:
            parts.append(f"Each group's standardised term is capped at {float(self.cap):g}.")
        if self.weakest_weight is not None:
            parts.append(f"The smallest of them counts {1.0 + float(self.weakest_weight):g} times where it is above 0 "
                         "(an app that stands out in every group).")
        return " ".join(parts)

    def score_function(self, network: torch.nn.Module):
        """``x -> score`` for this network (what ``dfp_core.ml.evaluation`` compares)."""
        return lambda x: self.scores(network, x)[1]

    def save(self, path: str | Path) -> None:
        """A torch file of plain tensors (read back with ``weights_only``); empty for ``mse``."""
        names = STATE[self.kind] + tuple(n for n in OPTIONAL_STATE.get(self.kind, ()) if getattr(self, n) is not None)
        state = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in names}
        if self.kind == "mse":  # the layout of versions saved before grouped_error
            state = {"location": torch.empty(0, dtype=torch.float64), "precision": torch.empty(0, dtype=torch.float64)}
        torch.save(state, Path(path))

    @classmethod
    def load(cls, kind: str, path: str | Path | None) -> "ErrorScore":
        if kind == "mse":
            return cls("mse")
        if path is None:
            raise DatasetError(f"the model's {kind} score has no fitted statistics (error_score artifact)")
        if kind not in SCORES:
            raise DatasetError(f"the model's score {kind!r} is not one this scorer knows ({', '.join(SCORES)})")
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        missing = [name for name in STATE[kind] if name not in state]
        if missing:
            raise DatasetError(f"the model's {kind} statistics ({Path(path).name}) lack {', '.join(missing)}")
        names = STATE[kind] + tuple(n for n in OPTIONAL_STATE.get(kind, ()) if n in state)
        return cls(kind, **{name: state[name].numpy() for name in names})
