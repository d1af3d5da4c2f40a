"""The python_model file of the registered model ("models from code"): MLflow runs this
file when the model is loaded; the scorer's code comes with the model (its code_paths)."""

import mlflow.models

from dfp_core.serving.scorer import KronodroidScorer

mlflow.models.set_model(KronodroidScorer())
