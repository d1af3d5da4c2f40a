"""How training logs the scorer as an MLflow model that runs outside this project.

The model is logged "from code" (``dfp_core/serving/model_code.py``): its code is the
inference modules only (``INFERENCE_MODULES``, copied as its ``code_paths``), its
artifacts are plain files (a torch state dict, JSON), and its ``requirements.txt`` pins
every package the scorer imports and everything they need, so a fresh virtualenv made
from that file alone loads and serves it. Nothing is pickled.

Why not ``mlflow.pytorch.log_model``: MLflow 3's default PyTorch serialisation (``pt2``)
loads back as a torch GraphModule, and a scorer needs the fitted preprocessing and the
anomaly threshold anyway.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import mlflow

from dfp_core.errors import DatasetError
from dfp_core.ml.fit import feature_groups
from dfp_core.serving.scorer import ARTIFACT_FILES, EXPLAIN_PARAM, ID_COLUMN
from dfp_core.kronodroid.schema import FEATURE_COLUMNS, FEATURE_GROUPS
from dfp_core.serving.preprocess import feature_matrix

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.ml.model import KronodroidAutoencoder
    from dfp_core.serving.preprocess import Preprocessor
    from dfp_core.serving.score import ErrorScore

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # core/dfp_core
# What the registered model runs, relative to the dfp_core package: nothing else is copied.
INFERENCE_MODULES = ("__init__.py", "errors.py", "serving/__init__.py", "serving/network.py",
                     "serving/preprocess.py", "serving/score.py", "serving/scorer.py")
MODEL_CODE = PACKAGE_ROOT / "serving" / "model_code.py"
# The scorer's imports; requirements.txt pins these and their dependencies.
SCORER_DISTRIBUTIONS = ("mlflow", "torch", "numpy", "pandas")


def build_model_artifacts(model: "KronodroidAutoencoder", preprocessor: "Preprocessor", error_score: "ErrorScore",
                          threshold: float, target_fpr: float | None, out_dir: str | Path) -> dict[str, str]:
    """The scorer's five files in ``out_dir``; the mapping for ``log_model(artifacts=...)``."""
    if model.hparams.input_dim != preprocessor.n_features:
        raise DatasetError(
            f"the model expects {model.hparams.input_dim} features, the preprocessor gives {preprocessor.n_features}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / fname for name, fname in ARTIFACT_FILES.items()}
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, paths["network_state"])
    paths["network_config"].write_text(json.dumps(model.network_config(), indent=1) + "\n")
    preprocessor.save(paths["preprocessor"])
    error_score.save(paths["error_score"])
    point = {"threshold": float(threshold), "score": error_score.kind,
             "target_fpr": None if target_fpr is None else float(target_fpr)}
    if error_score.kind == "grouped_error":  # the groups' names, for the explanations the scorer gives
        point["groups"] = list(feature_groups(preprocessor.features)[0])
    paths["threshold"].write_text(json.dumps(point) + "\n")
    return {name: str(p) for name, p in paths.items()}


def stage_inference_code(dest: str | Path) -> str:
    """A copy of the inference modules as a ``dfp_core`` package in ``dest``; its path is
    the model's ``code_paths`` entry."""
    package = Path(dest) / "dfp_core"
    for rel in INFERENCE_MODULES:
        target = package / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_ROOT / rel, target)
    return str(package)


def pinned_requirements(roots: Iterable[str] = SCORER_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of ``roots`` and of every distribution they require (markers
    evaluated here, extras followed), as installed: a closed, pinned requirements list.
    Local version labels (``+cu132``) are dropped: PyPI serves the plain versions."""
    pins: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise DatasetError(f"cannot pin the model's requirements: {name} is not installed") from None
        pins[canonicalize_name(dist.metadata["Name"])] = dist.version.split("+")[0]
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in wanted):
                pending.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def model_signature(features: Sequence[str] | None = None):
    """Every feature a double, ``sample_id`` an optional string, in and out.

    Built rather than inferred from a 476-column example, whose integer columns would be
    typed ``long`` and then reject NaN or floats (MLflow does not widen int64 to double):
    pass inputs through ``as_model_input``. MLflow refuses inputs missing a feature or
    with a value that is not a number (HTTP 400, naming the column) and drops columns
    outside the signature; ``sample_id`` is in it, so it passes through.
    """
    inputs = [ColSpec(DataType.double, name) for name in (features or FEATURE_COLUMNS)]
    inputs.append(ColSpec(DataType.string, ID_COLUMN, required=False))
    outputs = [ColSpec(DataType.string, ID_COLUMN, required=False), ColSpec(DataType.double, "reconstruction_error"),
               ColSpec(DataType.double, "anomaly_score"), ColSpec(DataType.boolean, "is_anomaly")]
    # explain=K: each app's top K features and its groups' shares of the score (KronodroidScorer.predict)
    params = ParamSchema([ParamSpec(EXPLAIN_PARAM, DataType.long, 0)])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


def as_model_input(frame: pd.DataFrame, features: Sequence[str] | None = None) -> pd.DataFrame:
    """The feature columns as float64 (plus ``sample_id`` as str when present): what
    ``model_signature`` accepts. Raises DatasetError naming missing feature columns."""
    names = list(features or FEATURE_COLUMNS)
    out = pd.DataFrame(feature_matrix(frame, names), columns=names, index=frame.index)
    if ID_COLUMN in frame.columns:
        out[ID_COLUMN] = frame[ID_COLUMN].astype(str).to_numpy()
    return out


def log_scorer_model(model: "KronodroidAutoencoder", preprocessor: "Preprocessor", error_score: "ErrorScore",
                     threshold: float, target_fpr: float | None, example: pd.DataFrame, workdir: str | Path):
    """Log the scorer into the active MLflow run as ``model``; returns MLflow's ModelInfo."""
    workdir = Path(workdir)
    artifacts = build_model_artifacts(model, preprocessor, error_score, threshold, target_fpr, workdir / "artifacts")
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE), artifacts=artifacts,
        code_paths=[stage_inference_code(workdir / "code")], signature=model_signature(), input_example=example,
        pip_requirements=pinned_requirements(),
    )


def _percent(value: float) -> str:
    return f"{100 * value:.3g}%"


# How the description names each score (dfp_core.serving.score.SCORES).
SCORE_WORDS = {
    "grouped_error": "anomaly_score, the sum over three feature groups (permission flags, syscall counts, metadata) "
                     "of each group's mean squared reconstruction error standardised by its mean and std on the "
                     "benign training apps; for permissions and metadata only shortfalls count (the reconstruction "
                     "above the input); 0 is the benign training apps' mean, and a score can be negative; "
                     "reconstruction_error, the mean squared error, is given beside it",
    "mse": "anomaly_score = reconstruction_error, the mean squared error of the app's preprocessed features",
    "error_mahalanobis": "anomaly_score, the squared Mahalanobis distance of the app's vector of absolute "
                         "per-feature reconstruction errors from those of the benign training apps (Ledoit-Wolf "
                         "covariance); reconstruction_error, the mean squared error, is given beside it",
}


def operating_point_lines(threshold: float, target_fpr: float | None, metrics: dict[str, float],
                          score: str | None = None) -> list[str]:
    """The operating point in words: the FPR target and threshold, what the test split
    shows there (overall and per data source), and the TPR of the score at fixed FPRs."""
    # Deferred (scikit-learn, SciPy): only the operating point's lines need it.
    from dfp_core.ml.metrics import REPORTED_FPRS, SOURCE_SEP, fpr_key

    chosen = (f"set on the validation split so that at most {_percent(target_fpr)} of its benign apps are flagged "
              f"(reached there: {_percent(metrics['val_fpr'])})" if target_fpr is not None and "val_fpr" in metrics
              else f"set for a benign false-positive rate of {_percent(target_fpr)}" if target_fpr is not None
              else "set by hand")
    kind = f" ({score})" if score else ""
    lines = [f"Operating point: is_anomaly = anomaly_score{kind} > {threshold:.6g}, {chosen}."]
    if {"fpr_95_low", "fpr_95_high", "val_benign"} <= set(metrics):
        lines.append(f"On new benign apps like the {int(metrics['val_benign'])} it was set on, its FPR lies between "
                     f"{_percent(metrics['fpr_95_low'])} and {_percent(metrics['fpr_95_high'])} (95%); "
                     "on later apps it drifts (check the share `dfp score` flags).")
    measured = ", ".join(f"{name} {metrics[f'test_{key}']:.3f}" for key, name in (
        ("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("fpr", "benign FPR"))
        if f"test_{key}" in metrics)
    if measured:
        lines.append(f"Test split at that threshold: {measured}.")
    per_source = [f"{key.split(SOURCE_SEP, 1)[1]} {_percent(value)}" for key, value in sorted(metrics.items())
                  if key.startswith(f"test_fpr{SOURCE_SEP}")]
    if per_source:
        lines.append(f"Benign FPR on test per data source: {', '.join(per_source)}.")
    curve = [f"{_percent(metrics[f'test_{fpr_key(f)}'])} at {_percent(f)}" for f in REPORTED_FPRS
             if f"test_{fpr_key(f)}" in metrics]
    if curve:
        auc = f", ROC-AUC {metrics['test_roc_auc']:.3f}" if "test_roc_auc" in metrics else ""
        lines.append(f"Malware caught (TPR) at a benign FPR of: {', '.join(curve)}{auc}.")
    return lines


def model_description(score: str, threshold: float, target_fpr: float | None, metrics: dict[str, float],
                      features: Sequence[str] | None = None, score_detail: str = "") -> str:
    """What a registered version says about itself: the score (``score_detail``: what its
    fitted state adds, ``ErrorScore.described``), its operating point (FPR target, threshold,
    test figures there), the input (feature groups; the full list is the model's signature),
    the output."""
    names = list(features or FEATURE_COLUMNS)
    # The groups grouped_error weighs apart (nr_syscalls, the total, counts as a syscall count).
    syscalls = [n for n in names if n in FEATURE_GROUPS["syscalls"]]
    permissions = [n for n in names if n in FEATURE_GROUPS["permissions"]]
    metadata_cols = [n for n in names if n not in FEATURE_GROUPS["syscalls"] and n not in FEATURE_GROUPS["permissions"]]
    return "\n".join([
        "KronoDroid Android malware detector: an autoencoder trained on benign apps; an app that it reconstructs "
        "badly is unlike the benign apps it learned.",
        "",
        f"Score ({score}): {SCORE_WORDS[score]}.{' ' + score_detail if score_detail else ''} "
        "Features are preprocessed with median imputation, log1p, "
        "standardisation with train statistics, clipped to +-5. Higher is more anomalous.",
        *operating_point_lines(threshold, target_fpr, metrics, score),
        "",
        f"Input: one row per app with {len(names)} numeric columns (missing values are imputed; a missing column or a "
        f"non-number is refused with HTTP 400 naming it): {len(syscalls)} system-call counts (sc_* and nr_syscalls, e.g. "
        f"{', '.join(syscalls[:3])}), {len(permissions)} permission flags (perm_*, e.g. {', '.join(permissions[:3])}) "
        f"and {len(metadata_cols)} metadata counts and sizes ({', '.join(metadata_cols)}); optionally sample_id, "
        "passed through. The full list and types are the model's signature (MLmodel).",
        "Output: sample_id (when given), reconstruction_error, anomaly_score, is_anomaly; one row per input row.",
        "Serve: `dfp serve --model-uri models:/<name>/<version>` or `mlflow models serve -m models:/<name>/<version>`; "
        "POST /invocations with {\"dataframe_split\": {\"columns\": [...], \"data\": [[...]]}}.",
    ])
