"""The MLflow scorer: a pyfunc wrapping preprocessing + autoencoder + threshold.

Why a pyfunc rather than ``mlflow.pytorch.log_model``: MLflow 3's default
PyTorch serialisation (``pt2``, torch.export) loads back as a torch
GraphModule, not our LightningModule, and a scorer needs the fitted
preprocessing and the anomaly threshold anyway. A state_dict + constructor
config + preprocessor JSON + threshold JSON is explicit, portable (no pickled
classes in the weights) and loads as a plain ``KronodroidAutoencoder``.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from dfp_core.errors import DatasetError
from dfp_core.ml.model import KronodroidAutoencoder
from dfp_core.ml.preprocess import Preprocessor

ARTIFACT_FILES = {
    "model_state": "model_state.pt",
    "model_config": "model_config.json",
    "preprocessor": "preprocessor.json",
    "threshold": "threshold.json",
}
OUTPUT_COLUMNS = ("reconstruction_error", "is_anomaly")
ID_COLUMN = "sample_id"


def load_autoencoder(state_path: str | Path, config_path: str | Path) -> KronodroidAutoencoder:
    """A ``KronodroidAutoencoder`` (CPU, eval mode) from a state_dict file and its config JSON."""
    model = KronodroidAutoencoder(**json.loads(Path(config_path).read_text()))
    state = torch.load(Path(state_path), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def build_pyfunc_artifacts(
    model: KronodroidAutoencoder,
    preprocessor: Preprocessor,
    threshold: float,
    quantile: float | None,
    out_dir: str | Path,
) -> dict[str, str]:
    """Write the four artifact files into ``out_dir``; returns the mapping for
    ``mlflow.pyfunc.log_model(..., artifacts=...)``."""
    if model.hparams.input_dim != preprocessor.n_features:
        raise DatasetError(
            f"the model expects {model.hparams.input_dim} features, the preprocessor gives {preprocessor.n_features}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / fname for name, fname in ARTIFACT_FILES.items()}
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, paths["model_state"])
    paths["model_config"].write_text(json.dumps(model.config(), indent=1) + "\n")
    preprocessor.save(paths["preprocessor"])
    paths["threshold"].write_text(
        json.dumps({"threshold": float(threshold), "quantile": None if quantile is None else float(quantile)}) + "\n"
    )
    return {name: str(p) for name, p in paths.items()}


class AutoencoderPyfunc(mlflow.pyfunc.PythonModel):
    """Scores rows: ``reconstruction_error`` (float64), ``is_anomaly`` (error > threshold)
    and ``sample_id`` when the input has it; one output row per input row, same order."""

    def __init__(self) -> None:
        self.model: KronodroidAutoencoder | None = None
        self.preprocessor: Preprocessor | None = None
        self.threshold: float | None = None
        self.quantile: float | None = None

    def load_context(self, context) -> None:
        arts = context.artifacts
        missing = [k for k in ARTIFACT_FILES if k not in arts]
        if missing:
            raise DatasetError(f"pyfunc artifacts missing: {', '.join(missing)}")
        self.model = load_autoencoder(arts["model_state"], arts["model_config"])
        self.preprocessor = Preprocessor.load(arts["preprocessor"])
        thr = json.loads(Path(arts["threshold"]).read_text())
        self.threshold = float(thr["threshold"])
        self.quantile = thr.get("quantile")

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str]) -> "AutoencoderPyfunc":
        """A loaded scorer straight from the artifact files (no MLflow model needed)."""
        obj = cls()
        obj.load_context(SimpleNamespace(artifacts=dict(artifacts), model_config={}))
        return obj

    # The pd.DataFrame hint is deliberate: MLflow 3 warns about an un-annotated
    # ``model_input`` at class definition; a DataFrame hint adds no extra validation.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.model is None:
            if context is None:
                raise DatasetError("the scorer is not loaded: no artifacts")
            self.load_context(context)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        x = self.preprocessor.transform(frame)  # DatasetError naming missing feature columns
        errors = self.model.reconstruction_error(torch.from_numpy(x)).numpy().astype(np.float64)
        out = pd.DataFrame(
            {"reconstruction_error": errors, "is_anomaly": errors > self.threshold},
            index=frame.index,
        )
        if ID_COLUMN in frame.columns:
            out.insert(0, ID_COLUMN, frame[ID_COLUMN].to_numpy())
        return out.reset_index(drop=True)


def pyfunc_signature(features: Sequence[str] | None = None, with_sample_id: bool = True):
    """An explicit signature: every feature a double, ``sample_id`` an optional string.

    Built rather than inferred from a 476-column example, whose integer columns
    would be typed ``long`` and then reject NaN or floats. MLflow's schema
    enforcement does not widen int64 to double (only ints of <= 6 bytes, or
    0/1-valued int64 columns), so pass inputs through ``as_model_input`` first.
    Columns outside the signature are dropped by MLflow before ``predict``;
    ``sample_id`` is in it (optional) so that it passes through.
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    from dfp_core.kronodroid.schema import FEATURE_COLUMNS

    cols = [ColSpec(DataType.double, name) for name in (features or FEATURE_COLUMNS)]
    outs = [ColSpec(DataType.double, "reconstruction_error"), ColSpec(DataType.boolean, "is_anomaly")]
    if with_sample_id:
        cols.append(ColSpec(DataType.string, ID_COLUMN, required=False))
        outs.insert(0, ColSpec(DataType.string, ID_COLUMN, required=False))
    return ModelSignature(inputs=Schema(cols), outputs=Schema(outs))


def as_model_input(frame: pd.DataFrame, features: Sequence[str] | None = None) -> pd.DataFrame:
    """The feature columns as float64 (plus ``sample_id`` as str when present): what
    ``pyfunc_signature`` accepts. Raises DatasetError naming missing feature columns."""
    from dfp_core.ml.preprocess import feature_matrix
    from dfp_core.kronodroid.schema import FEATURE_COLUMNS

    names = list(features or FEATURE_COLUMNS)
    out = pd.DataFrame(feature_matrix(frame, names), columns=names, index=frame.index)
    if ID_COLUMN in frame.columns:
        out[ID_COLUMN] = frame[ID_COLUMN].astype(str).to_numpy()
    return out


def pip_requirements() -> list[str]:
    """Pinned requirements of the scorer, so ``log_model`` skips its slow
    requirement-inference subprocess (local version labels like ``+cu132`` dropped)."""
    reqs = []
    for dist in ("mlflow", "torch", "lightning", "numpy", "pandas"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:  # pragma: no cover - partial installs
            reqs.append(dist)
    return reqs


def code_paths() -> list[str]:
    """The ``dfp_core`` package directory, for ``log_model(code_paths=...)`` so the
    model loads where dfp_core is not installed."""
    import dfp_core

    return [str(Path(dfp_core.__file__).parent)]
