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
from types import SimpleNamespace
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
from dfp_core.serving.score import ErrorScore

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
EXPLAIN_PARAM = "explain"  # predict's parameter: how many top features to name per app (0: none)


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
        self.group_names: tuple[str, ...] = ()  # the grouped score's groups, as training named them

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
        if self.error_score.kind == "grouped_error":  # versions before the names were kept: numbered
            count = self.error_score.shortfall_only.size
            self.group_names = tuple(threshold.get("groups") or (f"group{g + 1}" for g in range(count)))
        if threshold.get("target_fpr") is not None:
            self.target_fpr = float(threshold["target_fpr"])
        elif threshold.get("quantile") is not None:  # versions before the FPR target: the benign quantile
            self.target_fpr = 1.0 - float(threshold["quantile"])

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str]) -> "KronodroidScorer":
        """A loaded scorer straight from the artifact files (no MLflow model needed)."""
        scorer = cls()
        scorer.load_context(SimpleNamespace(artifacts=dict(artifacts)))
        return scorer

    # The DataFrame hint: MLflow 3 warns about an un-annotated model_input; it adds no checks.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.network is None:
            self.load_context(context)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            top = explain_count((params or {}).get(EXPLAIN_PARAM, 0))
            x = self.preprocessor.transform(frame)
            if top:
                out = self._explained(x, top)
            else:
                errors, scores, flags = self._scores(x)
                out = pd.DataFrame({"reconstruction_error": errors, "anomaly_score": scores, "is_anomaly": flags})
        except DatasetError as exc:  # missing or non-numeric feature columns, named; an explanation it cannot give
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
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

    def explain_frame(self, frame: pd.DataFrame, top: int, group_names: tuple[str, ...] | None = None) -> pd.DataFrame:
        """``predict``'s outputs (the same scores) and why each row scores as it does:
        ``explanation_columns(top)`` (``ErrorScore.explained``). DatasetError for a version whose
        score has no per-feature terms (``mse``, ``error_mahalanobis``)."""
        return self._explained(self.preprocessor.transform(frame), top, group_names)

    def explain_matrix(self, raw: np.ndarray, top: int) -> pd.DataFrame:
        """``explain_frame`` for ``score_matrix``'s input (``raw`` is overwritten)."""
        return self._explained(self.preprocessor.transform_matrix(raw), top)

    def explanation_columns(self, top: int, group_names: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """``top1_feature``, ``top1_group``, ``top1_contribution`` ... then ``<group>_contribution``
        per group: a share of the score, in its units; the groups' add up to it."""
        tops = tuple(f"top{i}_{what}" for i in range(1, top + 1) for what in ("feature", "group", "contribution"))
        return tops + tuple(f"{name}_contribution" for name in (group_names or self.group_names))

    def _explained(self, x: np.ndarray, top: int, group_names: tuple[str, ...] | None = None) -> pd.DataFrame:
        if self.network is None:
            raise DatasetError("the scorer is not loaded")
        if self.error_score.kind != "grouped_error":
            raise DatasetError(f"this version scores with {self.error_score.kind}, which has no per-feature terms to "
                               "explain it by: explanations need a version trained with the grouped_error score")
        if top > len(self.preprocessor.features):
            raise DatasetError(f"{EXPLAIN_PARAM} takes at most {len(self.preprocessor.features)} features, got {top}")
        names = group_names or self.group_names
        done = self.error_score.explained(self.network, x, top)
        features = np.asarray(self.preprocessor.features, dtype=object)
        group_of = np.asarray(names, dtype=object)[self.error_score.groups]
        out = {"reconstruction_error": done.errors, "anomaly_score": done.scores, "is_anomaly": done.scores > self.threshold}
        for i in range(top):
            index = done.top_features[:, i]
            out.update({f"top{i + 1}_feature": features[index], f"top{i + 1}_group": group_of[index],
                        f"top{i + 1}_contribution": done.top_contributions[:, i]})
        for g, name in enumerate(names):
            out[f"{name}_contribution"] = done.group_contributions[:, g]
        return pd.DataFrame(out)

    def _scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        errors, scores = self.error_score.scores(self.network, x)
        return errors, scores, scores > self.threshold


def explain_count(value: Any) -> int:
    """The ``explain`` parameter as a count of features (0: no explanation); DatasetError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DatasetError(f"{EXPLAIN_PARAM} must be a whole number of features, 0 or more, got {value!r}")
    return int(value)

