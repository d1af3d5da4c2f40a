"""A plain PyTorch training loop (no Lightning) for the throughput benchmark.

Equivalent to ``Trainer.fit`` on ``KronodroidAutoencoder``: same model, same
DataLoaders (and batches), Adam with the model's weight decay, MSE loss, one
validation pass per epoch. Not used for real training.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dfp_core.ml.model import KronodroidAutoencoder, batch_features


def train_plain(
    model: KronodroidAutoencoder,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    max_epochs: int,
    lr: float | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``model`` in place; returns per-epoch ``train_loss``/``val_loss``
    (sample-weighted means, like Lightning's epoch aggregation), ``epoch_seconds``,
    ``samples`` (train rows seen) and ``seconds`` (total wall time)."""
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=model.hparams.lr if lr is None else lr,
        weight_decay=model.hparams.weight_decay,
    )
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "epoch_seconds": [], "samples": 0}
    start = time.perf_counter()
    for _ in range(int(max_epochs)):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for batch in train_loader:
            x = batch_features(batch).to(device, non_blocking=True)
            loss = nn.functional.mse_loss(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            n += len(x)
        history["train_loss"].append(total / max(n, 1))
        history["samples"] += n
        if val_loader is not None:
            model.eval()
            total, n = 0.0, 0
            with torch.no_grad():
                for batch in val_loader:
                    x = batch_features(batch).to(device, non_blocking=True)
                    total += nn.functional.mse_loss(model(x), x).item() * len(x)
                    n += len(x)
            history["val_loss"].append(total / max(n, 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        history["epoch_seconds"].append(time.perf_counter() - t0)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history
