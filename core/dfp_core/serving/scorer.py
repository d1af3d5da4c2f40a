"""The registered model's scorer: preprocessing, the autoencoder network, the threshold.

An MLflow ``PythonModel`` logged "from code" (``model_code.py``): loading it runs this
file's code from the model's ``code/`` folder and reads five plain files (two torch files of
tensors, read with ``weights_only``, and three JSON files). Nothing is unpickled.

Input: one row per app, the model's feature columns (numbers; missing values are imputed
as in training) and optionally ``sample_id``. Output: ``reconstruction_error`` (float64,
the mean squared error), ``anomaly_score`` (float64, the version's score, see
``score.py``) and ``is_anomaly`` (score above the threshold), with ``sample_id`` when given; one output
row per input row, in order. Missing or non-numeric feature columns are refused with an
``INVALID_PARAMETER_VALUE`` error naming them (HTTP 400 from MLflow's scoring server).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from dfp_core.errors import DatasetError
from dfp_core.serving.network import AutoencoderNetwork
from dfp_core.serving.preprocess import Preprocessor
from dfp_core.serving.score import ErrorScore, Explained

# The model's artifacts: name in the MLmodel -> file name.
ARTIFACT_FILES = {
    "network_state": "network_state.pt",
    "network_config": "network_config.json",
    "preprocessor": "preprocessor.json",
    "threshold": "threshold.json",
    "error_score": "error_score.pt",
}
# Versions registered before the score choice have no error_score: their score is the MSE.
OPTIONAL_ARTIFACTS = ("error_score",)
ID_COLUMN = "sample_id"
OUTPUT_COLUMNS = ("reconstruction_error", "anomaly_score", "is_anomaly")


def load_network(state_path: str | Path, config_path: str | Path) -> AutoencoderNetwork:
    """The network (CPU, eval mode) from its state dict and its config JSON."""
    network = AutoencoderNetwork(**json.loads(Path(config_path).read_text()))
    network.load_state_dict(torch.load(Path(state_path), map_location="cpu", weights_only=True))
    return network.eval()


class KronodroidScorer(mlflow.pyfunc.PythonModel):
    """Scores rows with the network, preprocessing and threshold of one training run."""

    def __init__(self) -> None:
        self.network: AutoencoderNetwork | None = None
        self.preprocessor: Preprocessor | None = None
        self.threshold: float | None = None
        self.error_score: ErrorScore | None = None
        self.target_fpr: float | None = None  # the benign FPR the threshold was set for

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        missing = [name for name in ARTIFACT_FILES if name not in artifacts and name not in OPTIONAL_ARTIFACTS]
        if missing:
            raise DatasetError(f"the model's artifacts lack {', '.join(missing)}")
        self.network = load_network(artifacts["network_state"], artifacts["network_config"])
        self.preprocessor = Preprocessor.load(artifacts["preprocessor"])
        threshold = json.loads(Path(artifacts["threshold"]).read_text())
        self.threshold = float(threshold["threshold"])
        self.error_score = ErrorScore.load(threshold.get("score", "mse"), artifacts.get("error_score"))
        if threshold.get("target_fpr") is not None:
            self.target_fpr = float(threshold["target_fpr"])
        elif threshold.get("quantile") is not None:  # versions before the FPR target: the benign quantile
            self.target_fpr = 1.0 - float(threshold["quantile"])

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str]) -> "KronodroidScorer":
        """A loaded scorer straight from the artifact files (no MLflow model needed)."""
        from types import SimpleNamespace

        scorer = cls()
        scorer.load_context(SimpleNamespace(artifacts=dict(artifacts)))
        return scorer

    # The DataFrame hint: MLflow 3 warns about an un-annotated model_input; it adds no checks.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.network is None:
            self.load_context(context)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            x = self.preprocessor.transform(frame)
        except DatasetError as exc:  # missing or non-numeric feature columns, named
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        errors, scores, flags = self._scores(x)
        out = pd.DataFrame({"reconstruction_error": errors, "anomaly_score": scores, "is_anomaly": flags})
        if ID_COLUMN in frame.columns:
            out.insert(0, ID_COLUMN, frame[ID_COLUMN].to_numpy())
        return out

    def score_matrix(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict``'s three outputs for a float64 matrix whose columns are
        ``preprocessor.features`` in order, without a DataFrame (``raw`` is overwritten):
        what the scoring server runs, bit for bit what ``predict`` gives for the same rows."""
        if self.network is None:
            raise DatasetError("the scorer is not loaded")
        return self._scores(self.preprocessor.transform_matrix(raw))

    def explain_frame(self, frame: pd.DataFrame, top: int) -> Explained:
        """Why each row scores as it does: the ``grouped_error`` score's top ``top`` features
        and each group's contribution (``ErrorScore.explained``); the scores are ``predict``'s.
        DatasetError for a version whose score has no per-feature terms (``mse``, ``error_mahalanobis``)."""
        if self.network is None:
            raise DatasetError("the scorer is not loaded")
        if self.error_score.kind != "grouped_error":
            raise DatasetError(f"its score is {self.error_score.kind}, which has no per-feature terms: explanations "
                               "need a version trained with the grouped_error score")
        return self.error_score.explained(self.network, self.preprocessor.transform(frame), top)

    def _scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        errors, scores = self.error_score.scores(self.network, x)
        return errors, scores, scores > self.threshold
