"""KFP component: train the autoencoder on a lakeFS commit and register it in MLflow.

TRAIN_IMAGE is the one place to change the image of every pipeline step
(``DFP_TRAIN_IMAGE`` at compile time overrides it too), e.g. after pushing it
to your registry.
"""

import os
from typing import NamedTuple

from kfp import dsl

TRAIN_IMAGE = os.environ.get("DFP_TRAIN_IMAGE", "dfp/kronodroid-train:latest")


@dsl.component(base_image=TRAIN_IMAGE)
def train_kronodroid_autoencoder(
    lakefs_repository: str,
    lakefs_endpoint: str,
    lakefs_ref: str,
    mlflow_tracking_uri: str,
    max_epochs: int,
    latent_dim: int,
    batch_size: int,
    max_rows_per_split: int,
    model_name: str,
    accelerator: str,
) -> NamedTuple("TrainOutputs", [("model_name", str), ("model_version", str), ("mlflow_run_id", str)]):
    """Feast-served splits at ``lakefs_ref`` -> Lightning -> MLflow registry with lineage tags."""
    from collections import namedtuple

    from dfp_kfp.steps import train_step

    name, version, run_id = train_step(
        lakefs_repository, lakefs_endpoint, lakefs_ref, mlflow_tracking_uri, max_epochs, latent_dim, batch_size,
        max_rows_per_split, model_name, accelerator,
    )
    return namedtuple("TrainOutputs", ["model_name", "model_version", "mlflow_run_id"])(name, version, run_id)
