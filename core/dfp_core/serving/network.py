"""The autoencoder network: an MLP ``input_dim -> hidden_dims -> latent_dim -> reversed -> input_dim``.

Plain torch: training wraps it in a LightningModule (``dfp_core.ml.model``), scoring
loads it from a state dict.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def _mlp(dims: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear layers through ``dims``; ReLU + dropout between, none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class AutoencoderNetwork(nn.Module):
    """Encoder and decoder MLPs; the per-sample reconstruction error is the anomaly score."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], latent_dim: int, dropout: float = 0.0):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if int(input_dim) < 1 or int(latent_dim) < 1 or any(h < 1 for h in hidden_dims):
            raise ValueError("input_dim, hidden_dims and latent_dim must be positive")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        dims = (int(input_dim), *hidden_dims, int(latent_dim))
        self.encoder = _mlp(dims, float(dropout))
        self.decoder = _mlp(dims[::-1], float(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reconstruction_error(self, x, batch_size: int = 65536) -> Tensor:
        """Per-sample mean squared reconstruction error, in eval mode, without grad.

        Accepts a tensor (or anything ``torch.as_tensor`` takes); returns a 1-D
        float tensor on the CPU. The module's train/eval mode is restored.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D (rows, features) input, got shape {tuple(x.shape)}")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            parts = []
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start:start + batch_size].to(device)
                parts.append(((self(chunk) - chunk) ** 2).mean(dim=1).cpu())
            return torch.cat(parts) if parts else torch.empty(0)
        finally:
            self.train(was_training)
