"""The generated sample ranks the detectors as real KronoDroid does (issue 36): the
autoencoder's score, as ``dfp train`` fits it, above PCA and IsolationForest fitted on
the same benign training apps. Seeds are fixed; bench/generator_fidelity.py measures the
margins at full size beside the real subset."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dfp_core.kronodroid import generator
from dfp_core.kronodroid.reader import read_kronodroid
from dfp_core.splits import SplitSpec, assign_split

ROWS = 4000


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity")
    generator.generate(folder, ROWS, seed=0, layout="subset")
    frame, _ = read_kronodroid(folder)
    split = np.array([assign_split(s, SplitSpec()) for s in frame["sample_id"]])
    return {name: frame[split == name].reset_index(drop=True) for name in ("train", "val", "test")}


def test_the_autoencoder_ranks_above_pca_and_isolation_forest(frames, tmp_path):
    from dfp_core.ml.evaluation import method_scores
    from dfp_core.ml.fit import fit_and_evaluate
    from dfp_core.params import TrainConfig

    cfg = TrainConfig(accelerator="cpu", devices="1", seed=0, register=False, evaluate_baselines=False)
    result = fit_and_evaluate(cfg, SimpleNamespace(frames=frames), tmp_path)
    model, preprocessor = result.model.eval(), result.preprocessor
    test = frames["test"]
    baselines = method_scores(result.error_score.score_function(model), preprocessor, frames["train"],
                              test, seed=0)
    y = test["label"].to_numpy()
    auc = {"autoencoder": roc_auc_score(y, result.scores["test"]),
           **{m: roc_auc_score(y, baselines[m]) for m in ("pca", "isolation_forest")}}
    assert auc["autoencoder"] > auc["pca"] and auc["autoencoder"] > auc["isolation_forest"], auc
    assert auc["autoencoder"] > 0.95, auc  # the real subset's 0.988, within a few points
