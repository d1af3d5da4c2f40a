"""`dfp retarget`: another operating point for a registered version, without training again.

Training keeps the scores of the benign validation apps (``BENIGN_VAL_SCORES`` in its run).
From them a threshold is set for a new target FPR exactly as training sets one, and the
version's own checked files, with only ``threshold.json`` changed, are logged as a new model
in a new run and registered as a new version: the same lineage tags (so `dfp reproduce`
rebuilds the same data), the same params but the target, and ``dfp.threshold_from`` naming
the version whose network and score it keeps. Its files get their own digests and signature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dfp_core.errors import ConfigError
from dfp_core.ml.feature_drift import TRAINING_PROFILE
from dfp_core.ml.metrics import operating_point
from dfp_core.params import check_target_fpr
from dfp_core.summary import Summary
from dfp_core.ml.reproduce import model_lineage
from dfp_core.tracking.integrity import MODEL_DIGEST_TAG, record_model_digest
from dfp_core.tracking.registry import register_with_lineage, verified_copy

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

BENIGN_VAL_SCORES = "operating_point/benign_val_scores.json"
TAG_THRESHOLD_FROM = "dfp.threshold_from"  # <name>/<version> whose network and score a version keeps


def benign_val_record(score: str, scores: Sequence[float]) -> dict[str, Any]:
    """What training stores: the score's kind and the benign validation apps' scores."""
    return {"score": score, "benign_val_scores": [float(s) for s in scores]}


@dataclass(frozen=True)
class RetargetSummary(Summary):
    """The new version: where its threshold came from, and its operating point (threshold,
    target and validation FPR with its interval, the benign validation count)."""

    model: str
    from_version: str
    version: str
    alias: str | None
    run_id: str
    score: str
    operating_point: dict[str, float]
    AT_THE_TOP = "operating_point"  # its figures print at the top, as training's metrics


def retarget(rt: "Runtime", name: str, version: str | None, alias: str | None, target_fpr: float,
             new_alias: str | None = None) -> RetargetSummary:
    """A new version of ``name`` whose threshold is set for ``target_fpr``; its summary."""
    # Deferred (MLflow): when a retarget runs, not when its constants are imported.
    import mlflow

    from dfp_core.ml.pyfunc import model_description
    from dfp_core.tracking.runs import run_json

    check_target_fpr(target_fpr)
    source = model_lineage(rt, name, version, alias)
    label = f"version {source.version} of {name}"
    record = run_json(rt.mlflow, source.run_id, BENIGN_VAL_SCORES)
    if record is None:
        raise ConfigError(f"{label} has no stored benign validation scores ({BENIGN_VAL_SCORES} of run "
                          f"{source.run_id}): it was trained before they were kept; train again to set "
                          "another operating point")
    point = operating_point(record["benign_val_scores"], target_fpr)
    profile = run_json(rt.mlflow, source.run_id, TRAINING_PROFILE)  # None: the source has none either
    with rt.tracking():
        mv = rt.mlflow.get_model_version(name, source.version)
        with verified_copy(rt, mv) as local:
            kept = _rewrite_threshold(local, point, record["score"], f"{name}/{source.version}")
            score_detail = _score_detail(local, kept)
            experiment_id = rt.mlflow.get_run(source.run_id).info.experiment_id
            run_tags = {k: v for k, v in source.run_tags.items() if not k.startswith("mlflow.") and k != MODEL_DIGEST_TAG}
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-v{source.version}-fpr{target_fpr:g}",
                                  tags={**run_tags, TAG_THRESHOLD_FROM: f"{name}/{source.version}"}) as run:
                mlflow.log_params({**source.params, "target_fpr": str(float(target_fpr))})
                mlflow.log_metrics(point)
                mlflow.log_dict(record, BENIGN_VAL_SCORES)
                if profile is not None:  # `dfp drift` on the new version measures against the same training
                    mlflow.log_dict(profile, TRAINING_PROFILE)
                info = _log_model_dir(local)
                digest = record_model_digest(info.model_uri, rt.settings.mlflow.signing_key_text())
                mlflow.set_tag(MODEL_DIGEST_TAG, digest)
        tags = {**{k: v for k, v in source.tags.items() if k != MODEL_DIGEST_TAG},
                TAG_THRESHOLD_FROM: f"{name}/{source.version}", MODEL_DIGEST_TAG: digest}
        description = model_description(kept, point["threshold"], target_fpr, point,
                                        score_detail=score_detail) + \
            f"\n\nThreshold re-set from {label} (its network and score unchanged) by `dfp retarget`."
        new_version = register_with_lineage(rt.mlflow, info.model_uri, name, tags, new_alias, description)
    return RetargetSummary(model=name, from_version=source.version, version=new_version, alias=new_alias,
                           run_id=run.info.run_id, score=kept, operating_point=point)


def _rewrite_threshold(local: Path, point: dict[str, float], score: str, source: str) -> str:
    """``threshold.json`` of the model folder ``local`` with the new threshold and target; the score's kind."""
    path = local / "artifacts" / "threshold.json"
    current = json.loads(path.read_text())
    kept = current.get("score", "mse")
    if kept != score:
        raise ConfigError(f"{source} scores with {kept}, but its stored validation scores are {score}'s")
    current.update(threshold=point["threshold"], target_fpr=point["target_fpr"], threshold_from=source)
    path.write_text(json.dumps(current) + "\n")
    return kept


def _score_detail(local: Path, score: str) -> str:
    """``ErrorScore.described`` of the model folder ``local``'s fitted score (its cap and
    weakest-group weight, as that version was trained)."""
    # Deferred (MLflow, torch): when a retarget runs, not when its constants are imported.
    from mlflow.models import Model

    from dfp_core.serving.score import ErrorScore

    artifacts = Model.load(str(local)).flavors["python_function"]["artifacts"]
    spec = artifacts.get("error_score")  # absent: a version scored by the MSE
    return ErrorScore.load(score, None if spec is None else local / spec["path"]).described()


def _log_model_dir(local: Path):
    """The model folder ``local`` logged again into the active run: its own code, artifacts,
    signature, example and pinned requirements."""
    # Deferred (MLflow): when a retarget runs, not when its constants are imported.
    import mlflow
    from mlflow.models import Model

    mlmodel = Model.load(str(local))
    flavor = mlmodel.flavors["python_function"]
    artifacts = {key: str(local / spec["path"]) for key, spec in flavor["artifacts"].items()}
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(local / "model_code.py"), artifacts=artifacts,
        code_paths=[str(local / flavor["code"] / "dfp_core")], signature=mlmodel.signature,
        input_example=mlmodel.load_input_example(str(local)), pip_requirements=str(local / "requirements.txt"),
    )
