"""``ResidualMLP``: a deep residual MLP with FiLM time conditioning for vector data (gene expression)."""

from __future__ import annotations

import torch
from torch import nn

from cdm4mi.models.embeddings import TimestepEmbedding
from cdm4mi.models.registry import BACKBONES


class FiLMResidualBlock(nn.Module):
    """``h + Linear(SiLU(Linear(SiLU(LayerNorm(h) * (1 + scale) + shift))))``, scale/shift from the embedding."""

    def __init__(self, width: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(embed_dim, 2 * width)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(embedding).chunk(2, dim=-1)
        return h + self.body(self.norm(h) * (1 + scale) + shift)


@BACKBONES.register("residual_mlp")
class ResidualMLP(nn.Module):
    """Vectors ``x`` [B, dim] -> prediction [B, dim].

    ``cond_dim > 0`` accepts a conditioning vector [B, cond_dim] (e.g. a one-hot cell type),
    embedded and added to the time embedding.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 256,
        num_blocks: int = 4,
        time_embed_dim: int = 128,
        cond_dim: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.cond_dim = cond_dim
        self.time_embedding = TimestepEmbedding(time_embed_dim, time_embed_dim)
        self.cond_embedding = nn.Linear(cond_dim, time_embed_dim) if cond_dim > 0 else None
        self.input = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList(FiLMResidualBlock(hidden_dim, time_embed_dim, dropout) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.time_embedding(t)
        if self.cond_embedding is not None:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"residual_mlp: expected cond of shape ({x.shape[0]}, {self.cond_dim}), got {got}")
            embedding = embedding + self.cond_embedding(cond.to(embedding))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)
