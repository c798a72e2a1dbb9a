"""Vector backbones: ``ResidualMLP`` (bulk gene expression, any vector data) and the pieces every vector
backbone shares (``cdm4mi.models.bio`` builds on them).

Every vector backbone maps ``x`` [B, G] (G genes or features), timesteps ``t`` [B] and ``cond`` to [B, G].
Time and condition become one embedding ``c`` [B, time_embed_dim] (``VectorConditioning``) that drives
AdaLN-Zero modulation (Peebles & Xie 2023) in every block: LayerNorms without affine parameters are
shifted and scaled, and the residual branch gated, by a projection of ``c`` that is zero at initialisation,
so every block starts as the identity and the condition starts without effect.

``cond`` is None (the unconditional branch of classifier-free guidance) or a dict with ``label`` (int64 [B],
e.g. a cell type; ``num_classes`` > 0) and/or ``vector`` (float [B, cond_dim]; a bare tensor is taken as the
vector, as before labels existed). Label index ``num_classes`` is the *null label*: the same learned null
embedding that ``cond=None`` and classifier-free dropout (``cond_drop_prob``, training only) give.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdm4mi.models.attention import zeroed
from cdm4mi.models.conditioning import ConditionEncoder, as_cond_dict
from cdm4mi.models.embeddings import TimestepEmbedding
from cdm4mi.models.inputs import batch_timesteps
from cdm4mi.models.options import check_dropout
from cdm4mi.models.registry import BACKBONES


def check_vector_input(x: torch.Tensor, dim: int, network: str) -> None:
    """``x`` is [B, dim]: one row of ``dim`` genes / features per sample."""
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x: {network} expects [B, {dim}] (network.dim = {dim} genes / features), got {tuple(x.shape)}")


def check_positive(**options: int) -> None:
    """Every named option is >= 1 (errors name ``network.<option>``)."""
    for option, value in options.items():
        if value < 1:
            raise ValueError(f"network.{option}: must be >= 1, got {value}")


class VectorConditioning(nn.Module):
    """``t`` [B] and ``cond`` -> ``c`` [B, embed_dim]: time embedding + condition embedding.

    The condition (label and/or vector) is embedded by the image backbones' ``ConditionEncoder`` in its
    ``adaln`` mode, so labels, the null embedding and classifier-free dropout work as for images.
    """

    def __init__(self, embed_dim: int, num_classes: int = 0, cond_drop_prob: float = 0.0, vector_dim: int = 0):
        super().__init__()
        if num_classes < 0 or vector_dim < 0:
            raise ValueError(f"network.num_classes / cond_dim: must be >= 0, got {num_classes} / {vector_dim}")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"network.cond_drop_prob: must lie in [0, 1], got {cond_drop_prob}")
        if cond_drop_prob > 0 and not (num_classes or vector_dim):
            raise ValueError(f"network.cond_drop_prob: is {cond_drop_prob} but the network is unconditional "
                             "(num_classes = 0): there is no condition to drop")
        self.num_classes, self.vector_dim, self.cond_drop_prob = num_classes, vector_dim, cond_drop_prob
        self.null_label = num_classes
        self.time_embedding = TimestepEmbedding(embed_dim, embed_dim)
        self.condition = None
        if num_classes or vector_dim:
            self.condition = ConditionEncoder(1, "adaln", 0, vector_dim, num_classes, embed_dim, token_dim=embed_dim,
                                              patch_size=1, max_tokens=1, cond_drop_prob=cond_drop_prob)

    def forward(self, t: torch.Tensor, cond: object, x: torch.Tensor) -> torch.Tensor:
        """``c`` for the batch ``x`` [B, G] at timesteps ``t`` (a scalar is shared by the batch)."""
        c = self.time_embedding(batch_timesteps(t, x))
        parts = as_cond_dict({"vector": cond} if torch.is_tensor(cond) else cond)
        if parts and "image" in parts:
            raise ValueError("cond['image']: vector backbones take only 'label' and 'vector'")
        for key, size, option in (("label", self.num_classes, "num_classes"), ("vector", self.vector_dim, "cond_dim")):
            if parts and key in parts and not size:
                raise ValueError(f"cond['{key}']: given, but network.{option} is 0 (set it to condition on a {key})")
        if self.condition is None:
            return c
        if not parts:
            return c + self.condition.null(x).embedding
        label = parts.get("label")
        if not (torch.is_tensor(label) and label.shape == (x.shape[0],)):
            return c + self.condition(parts, x).embedding  # no labels (or the wrong shape, which it reports)
        # Label index num_classes asks for the null condition of that sample. The null embedding takes part
        # in every labelled batch, so it always has a gradient (DDP expects one for every parameter).
        null_rows = label == self.null_label
        embedding = self.condition({**parts, "label": label.masked_fill(null_rows, 0)}, x).embedding
        return c + torch.where(null_rows[:, None], self.condition.null(x).embedding, embedding)


class AdaLNModulation(nn.Module):
    """``c`` [B, embed_dim] -> ``count`` tensors [B, 1, ..., width] (``token_axes`` ones), zero at initialisation."""

    def __init__(self, embed_dim: int, width: int, count: int):
        super().__init__()
        self.count = count
        self.linear = zeroed(nn.Linear(embed_dim, count * width))

    def forward(self, c: torch.Tensor, token_axes: int = 0) -> tuple[torch.Tensor, ...]:
        out = self.linear(F.silu(c))
        return out.view(out.shape[0], *[1] * token_axes, out.shape[-1]).chunk(self.count, dim=-1)


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: normalised ``h`` scaled by ``1 + scale`` and shifted by ``shift`` (broadcast over tokens)."""
    return h * (1 + scale) + shift


class AdaLNResidualBlock(nn.Module):
    """``h + gate * MLP(modulate(LayerNorm(h)))`` with shift / scale / gate from ``c``.

    ``forward(h [B, ..., width], c [B, embed_dim]) -> [B, ..., width]``; the identity at initialisation.
    """

    def __init__(self, width: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.body = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))
        self.modulation = AdaLNModulation(embed_dim, width, 3)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c, token_axes=h.ndim - 2)
        return h + gate * self.body(modulate(self.norm(h), shift, scale))


class ResidualMLPBody(nn.Module):
    """``x`` [B, dim] and ``c`` [B, embed_dim] -> [B, dim]: input projection, AdaLN residual blocks, output,
    plus a per-gene skip ``k(c) * x``.

    The blocks work in ``hidden_dim`` (a few hundred) dimensions, far fewer than 20,000 genes, but a
    denoiser must also pass each gene's own noisy value through (the eps target is nearly ``x_t`` at high
    noise): the skip does that with one coefficient per gene and timestep, zero at initialisation. The
    input, output and skip maps are the only layers of size ``dim``: weights linear in the gene count.
    """

    def __init__(self, dim: int, hidden_dim: int, num_blocks: int, embed_dim: int, dropout: float):
        super().__init__()
        self.input = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList(AdaLNResidualBlock(hidden_dim, embed_dim, dropout) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))
        self.skip = AdaLNModulation(embed_dim, dim, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c)
        (skip,) = self.skip(c)
        return self.output(h) + skip * x


@BACKBONES.register("residual_mlp")
class ResidualMLP(nn.Module):
    """Deep residual MLP: ``forward(x [B, dim], t [B], cond) -> [B, dim]`` (module docstring for ``cond``).

    ``hidden_dim`` is the width of the ``num_blocks`` AdaLN residual blocks; ``time_embed_dim`` the width of
    ``c``. ``num_classes > 0`` makes it class-conditional (e.g. cell types), ``cond_dim > 0`` takes a
    conditioning vector [B, cond_dim]; ``cond_drop_prob`` trains the unconditional branch for guidance.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 256,
        num_blocks: int = 4,
        time_embed_dim: int = 128,
        cond_dim: int = 0,
        dropout: float = 0.0,
        num_classes: int = 0,
        cond_drop_prob: float = 0.0,
    ):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim, time_embed_dim=time_embed_dim)
        if num_blocks < 0:
            raise ValueError(f"network.num_blocks: must be >= 0, got {num_blocks}")
        check_dropout(dropout)
        self.dim, self.num_classes, self.cond_dim = dim, num_classes, cond_dim
        self.conditioning = VectorConditioning(time_embed_dim, num_classes, cond_drop_prob, vector_dim=cond_dim)
        self.cond_drop_prob, self.size_multiple = cond_drop_prob, 1  # vectors: no spatial sides
        self.body = ResidualMLPBody(dim, hidden_dim, num_blocks, time_embed_dim, dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        check_vector_input(x, self.dim, "residual_mlp")
        return self.body(x, self.conditioning(t, cond, x))
