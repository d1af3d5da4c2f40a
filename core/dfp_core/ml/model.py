"""The KronoDroid autoencoder in training: the network of ``dfp_core.serving.network``
as a LightningModule, trained with MSE.

Trained on benign apps only (see ``data.KronodroidDataModule``), its per-sample
reconstruction error is the anomaly score: malware reconstructs worse. With
``train_on="semi"`` its training batches carry labels ``(x, y)``: benign rows are
reconstructed (MSE) and each labelled malware row whose error is under
``MALWARE_MARGIN`` adds the shortfall (a hinge), so malware is pushed to a high error.
Its state dict has the network's keys, so the registered scorer loads it into the
plain network.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from dfp_core.params import TrainConfig
from dfp_core.serving.network import AutoencoderNetwork


# The per-sample MSE (in preprocessed, standardised units) the semi-supervised loss asks of
# labelled malware; benign rows reconstruct to ~0.1-0.5 (bench/detection.py, semi_supervised).
MALWARE_MARGIN = 2.0


def batch_labels(batch: Any) -> Tensor | None:
    """The labels of a labelled batch ``(x, y)``; None for a features-only batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        return batch[1]
    return None


def batch_features(batch: Any) -> Tensor:
    """The feature tensor of a batch: a tensor, or the first item of a tuple/list."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"unsupported batch type {type(batch).__name__}: expected a Tensor or (Tensor, ...)")


class KronodroidAutoencoder(L.LightningModule):
    """MLP autoencoder ``input_dim -> hidden_dims -> latent_dim -> reversed(hidden_dims) -> input_dim``."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = TrainConfig.hidden_dims,
        latent_dim: int = TrainConfig.latent_dim,
        dropout: float = TrainConfig.dropout,
        lr: float = TrainConfig.lr,
        weight_decay: float = TrainConfig.weight_decay,
    ):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        network = AutoencoderNetwork(input_dim, hidden_dims, latent_dim, dropout)  # checks the sizes
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "hidden_dims": hidden_dims,
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
            }
        )
        self._train_sum: Tensor | float = 0.0
        self._train_count = 0
        # The network's own modules, under the network's names: one state dict for both.
        self.encoder, self.decoder = network.encoder, network.decoder

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable) that rebuild this architecture."""
        hp = self.hparams
        return {
            "input_dim": int(hp.input_dim),
            "hidden_dims": [int(h) for h in hp.hidden_dims],
            "latent_dim": int(hp.latent_dim),
            "dropout": float(hp.dropout),
            "lr": float(hp.lr),
            "weight_decay": float(hp.weight_decay),
        }

    forward = AutoencoderNetwork.forward
    reconstruction_error = AutoencoderNetwork.reconstruction_error

    def network_config(self) -> dict[str, Any]:
        """``AutoencoderNetwork`` keyword arguments of this architecture."""
        return {k: v for k, v in self.config().items() if k in ("input_dim", "hidden_dims", "latent_dim", "dropout")}

    def _loss(self, batch: Any) -> Tensor:
        x = batch_features(batch)
        return nn.functional.mse_loss(self(x), x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch_features(batch), batch_labels(batch)
        if y is None:
            loss = nn.functional.mse_loss(self(x), x)
        else:  # semi-supervised: benign reconstructed, labelled malware pushed past the margin
            errors = ((self(x) - x) ** 2).mean(dim=1)
            benign, malware = errors[y == 0], errors[y == 1]
            loss = benign.mean() if benign.numel() else errors.sum() * 0.0
            if malware.numel():
                loss = loss + torch.relu(MALWARE_MARGIN - malware).mean()
        # A self.log call per step costs ~10% of a step of this small model:
        # keep a running, sample-weighted sum and log the epoch mean once.
        previous_sum, previous_count = (self._train_sum, self._train_count) if batch_idx else (0.0, 0)
        self._train_sum = previous_sum + loss.detach() * len(x)
        self._train_count = previous_count + len(x)
        if self.trainer.is_last_batch:
            self.log("train_loss", self._train_sum / self._train_count, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        # Synced: under DDP each process validates a shard, and early stopping needs the whole set.
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch_features(batch)),
                 sync_dist=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("test_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch_features(batch)))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class LossHistory(L.Callback):
    """Collects the epoch-level ``train_loss`` and ``val_loss`` of ``Trainer.fit``
    (sanity check and standalone ``validate`` runs excluded) into ``history``,
    the input of ``plots.plot_loss_curves``."""

    def __init__(self, keys: Sequence[str] = ("train_loss", "val_loss")):
        super().__init__()
        self.keys = tuple(keys)
        self.history: dict[str, list[float]] = {k: [] for k in self.keys}

    def _record(self, trainer: L.Trainer, prefix: str) -> None:
        for key in self.keys:
            if key.startswith(prefix) and key in trainer.callback_metrics:
                self.history[key].append(float(trainer.callback_metrics[key]))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._record(trainer, "val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "train")
