"""KFP component: train the autoencoder on a lakeFS commit and register it in MLflow.

TRAIN_IMAGE is the training image, by version tag; after pushing it to your
registry, change it here (or pass ``train_image`` to
``compile_kronodroid_autoencoder_pipeline``). The image holds everything the
step runs (kfp included), so the compiled step installs nothing.

Parameters are ``TrainConfig`` fields under their pipeline names
(``dfp_core.params``); a test checks them against it.
"""

from typing import NamedTuple

from kfp import dsl

from dfp_core import __version__

TRAIN_IMAGE = f"dfp/kronodroid-train:{__version__}"


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_kronodroid_autoencoder(
    lakefs_repository: str,
    lakefs_endpoint: str,
    lakefs_ref: str,
    mlflow_tracking_uri: str,
    model_name: str,
    max_rows_per_split: int,
    train_on: str,
    latent_dim: int,
    hidden_dims: str,
    dropout: float,
    lr: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    train_seed: int,
    target_fpr: float,
    score: str,
    accelerator: str,
    devices: str,
    strategy: str,
    num_nodes: int,
    evaluate_baselines: bool,
) -> NamedTuple("TrainOutputs", [("model_name", str), ("model_version", str), ("mlflow_run_id", str)]):
    """Feast-served splits at ``lakefs_ref`` -> Lightning -> MLflow registry with lineage tags."""
    params = dict(locals())
    from collections import namedtuple

    from dfp_core.process_exit import leave_heap_to_the_os, quiet_teardown_after_exit_handlers

    quiet_teardown_after_exit_handlers()  # before the step's imports register their own exit handlers
    from dfp_kfp.steps import train_step

    name, version, run_id = train_step(**params)
    leave_heap_to_the_os()  # the step's process ends once KFP has written the outputs
    return namedtuple("TrainOutputs", ["model_name", "model_version", "mlflow_run_id"])(name, version, run_id)

