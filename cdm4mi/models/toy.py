"""``SimpleScoreNetwork``: a small MLP denoiser for 2-D point clouds (toy distributions)."""

from __future__ import annotations

import torch
from torch import nn

from cdm4mi.models.embeddings import sinusoidal_embedding
from cdm4mi.models.registry import BACKBONES


@BACKBONES.register("simple_score")
class SimpleScoreNetwork(nn.Module):
    """SiLU MLP over ``[x, sinusoidal(t)]``: points ``x`` [B, dim] -> prediction [B, dim]."""

    def __init__(self, dim: int = 2, hidden_dim: int = 128, num_layers: int = 3, time_embed_dim: int = 32):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"network.num_layers: must be >= 1, got {num_layers}")
        self.time_embed_dim = time_embed_dim
        self.size_multiple, self.cond_drop_prob = 1, 0.0  # points: any number of them, unconditional
        layers: list[nn.Module] = []
        width = dim + time_embed_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
            width = hidden_dim
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.net(torch.cat([x, sinusoidal_embedding(t, self.time_embed_dim)], dim=-1))
