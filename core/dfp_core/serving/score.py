"""The anomaly score of an app, from the autoencoder's reconstruction of it.

- ``mse``: the mean squared reconstruction error over the features.
- ``error_mahalanobis`` (the default): the squared Mahalanobis distance of the app's
  vector of absolute per-feature errors from those of the benign training apps
  (Ledoit-Wolf shrunk covariance). Benign apps miss some features together; an app
  whose error pattern is unusual scores high even when its mean error is small. On the
  real subset's month split (train January-September, test October-December) it lifts
  the TPR at 5% FPR from 0.18 to 0.85 (``bench/detection.py``, figures in bench/README).

Both are computed in float64 from the network's float32 output; the reconstruction
error is returned beside the score either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfp_core.errors import DatasetError

# The scores implemented here; TrainConfig.score offers these (a unit test keeps them equal).
SCORES = ("error_mahalanobis", "mse")


def absolute_errors(network: torch.nn.Module, x: np.ndarray, batch_size: int):
    """(absolute per-feature errors, float64) per chunk of ``x``, in eval mode."""
    was_training = network.training
    network.eval()
    try:
        device = next(network.parameters()).device
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size]), dtype=torch.float32)
                chunk = chunk.to(device)
                yield (network(chunk) - chunk).abs().cpu().numpy().astype(np.float64)
    finally:
        network.train(was_training)


class ErrorScore:
    """How reconstruction errors become a score: the kind and, for ``error_mahalanobis``,
    the location and precision matrix of the benign training apps' error vectors (fitted
    in training: ``dfp_core.ml.fit.fit_error_score``)."""

    def __init__(self, kind: str, location: np.ndarray | None = None,
                 precision: np.ndarray | None = None):
        if kind not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")
        if kind == "error_mahalanobis":
            if location is None or precision is None:
                raise ValueError("error_mahalanobis needs the location and precision of the benign errors")
            location, precision = np.asarray(location, np.float64), np.asarray(precision, np.float64)
            if location.ndim != 1 or precision.shape != (location.size, location.size):
                raise ValueError(f"location {location.shape} and precision {precision.shape} do not match")
        self.kind, self.location, self.precision = kind, location, precision

    def scores(self, network: torch.nn.Module, x: np.ndarray, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction error, score) of each row of the preprocessed ``x``, float64."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D (rows, features) input, got shape {x.shape}")
        if self.location is not None and x.shape[1] != self.location.size:
            raise DatasetError(f"the score was fitted on {self.location.size} features, got {x.shape[1]}")
        errors, scores = [np.empty(0)], [np.empty(0)]
        for residual in absolute_errors(network, x, batch_size):
            errors.append((residual ** 2).mean(axis=1))
            if self.kind == "error_mahalanobis":
                centred = residual - self.location
                scores.append(np.einsum("ij,ij->i", centred @ self.precision, centred))
        mse = np.concatenate(errors)
        return mse, (mse if self.kind == "mse" else np.concatenate(scores))

    def score_function(self, network: torch.nn.Module):
        """``x -> score`` for this network (what ``dfp_core.ml.evaluation`` compares)."""
        return lambda x: self.scores(network, x)[1]

    def save(self, path: str | Path) -> None:
        """A torch file of plain tensors (read back with ``weights_only``); empty for ``mse``."""
        empty = torch.empty(0, dtype=torch.float64)
        torch.save({
            "location": empty if self.location is None else torch.from_numpy(self.location),
            "precision": empty if self.precision is None else torch.from_numpy(self.precision),
        }, Path(path))

    @classmethod
    def load(cls, kind: str, path: str | Path | None) -> "ErrorScore":
        if kind == "mse":
            return cls("mse")
        if path is None:
            raise DatasetError(f"the model's {kind} score has no fitted statistics (error_score artifact)")
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(kind, state["location"].numpy(), state["precision"].numpy())
