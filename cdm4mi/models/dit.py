"""Diffusion Transformer for 2D and 3D images (Peebles & Xie 2023, "DiT").

The input (noisy target, with the conditioning image stacked on the channels like the U-Net) is cut into
non-overlapping ``patch_size`` patches, each embedded as one token by a strided convolution; sinusoidal
features of the token's position (within its attention window, when attention is windowed) are added. ``depth`` transformer blocks follow, each AdaLN-Zero:
LayerNorms without affine parameters are shifted and scaled, and the residual branches gated, by a
projection of ``c`` = time embedding (+ condition embedding), zero at initialisation, so every block starts
as the identity. A last AdaLN-modulated, zero-initialised linear layer maps each token back to its patch.

Conditioning (``conditioning_key``, see ``cdm4mi.models.conditioning``) is the U-Net's: ``concat`` and
``adaln`` stack the image and add a vector / label embedding to ``c`` (every block here is AdaLN-Zero, so
the two differ only in that ``adaln`` needs no image); ``crossattn`` / ``hybrid`` add a cross-attention
branch to the condition's tokens in every block. Self-attention runs within windows of at most
``attention_window`` tokens per axis (``cdm4mi.models.attention``), so a 512x512 slice stays affordable.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cdm4mi.models.attention import Attention, windowed_self_attention, zeroed
from cdm4mi.models.conditioning import (
    ConditionEncoder,
    default_cond_channels,
    grid_position_embedding,
)
from cdm4mi.models.embeddings import TimestepEmbedding
from cdm4mi.models.inputs import batch_timesteps, check_spatial_shape, stack_condition, unpatchify
from cdm4mi.models.options import ConditioningKey, check_dropout
from cdm4mi.models.registry import BACKBONES

TIME_FREQUENCIES = 256  # sinusoidal features of the timestep, as in DiT


def _modulate(tokens: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: per-sample ``shift`` / ``scale`` [B, 1, C] applied to normalised ``tokens`` [B, N, C]."""
    return tokens * (1 + scale) + shift


class DiTBlock(nn.Module):
    """AdaLN-Zero transformer block: gated self-attention (within windows), optional cross-attention to
    conditioning tokens, gated MLP. ``forward(tokens [B, N, C], c [B, C], grid, context) -> [B, N, C]``;
    the identity at initialisation whatever its inputs (gates and cross-attention output start at zero)."""

    def __init__(self, hidden_size: int, num_head_channels: int, mlp_ratio: float, dropout: float,
                 window: int | None, context_channels: int | None = None):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attention = Attention(hidden_size, num_head_channels)
        # The AdaLN gate already starts this branch at zero; a zero output projection as well would leave
        # both without gradient (the gate's is the projection's output, the projection's is the gate).
        self.attention.out.reset_parameters()
        self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6) if context_channels else None
        self.cross_attention = (Attention(hidden_size, num_head_channels, context_channels)
                                if context_channels else None)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_width = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_width), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(mlp_width, hidden_size))
        self.modulation = nn.Sequential(nn.SiLU(), zeroed(nn.Linear(hidden_size, 6 * hidden_size)))

    def forward(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, ...],
                context: torch.Tensor | None = None) -> torch.Tensor:
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)[:, None].chunk(6, -1)
        attended = self._self_attention(_modulate(self.norm1(tokens), shift_attn, scale_attn), grid)
        tokens = tokens + gate_attn * attended
        if self.cross_attention is not None:
            if context is None:
                raise ValueError("cross-attention needs conditioning tokens, got None")
            tokens = tokens + self.cross_attention(self.cross_norm(tokens), context)
        return tokens + gate_mlp * self.mlp(_modulate(self.norm2(tokens), shift_mlp, scale_mlp))

    def _self_attention(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Attention of every token to the tokens of its window of the ``grid`` (all of them if no window)."""
        if self.window is None:
            return self.attention(tokens)
        batch, _, channels = tokens.shape
        grid_tokens = tokens.transpose(1, 2).reshape(batch, channels, *grid)
        return windowed_self_attention(self.attention, grid_tokens, self.window).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """AdaLN-modulated LayerNorm and a zero-initialised linear map: tokens [B, N, C] -> patches [B, N, p^d * C_out]."""

    def __init__(self, hidden_size: int, patch_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), zeroed(nn.Linear(hidden_size, 2 * hidden_size)))
        self.linear = zeroed(nn.Linear(hidden_size, patch_features))

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)[:, None].chunk(2, -1)
        return self.linear(_modulate(self.norm(tokens), shift, scale))


def _validate_options(spatial_dims: int, patch_size: int, hidden_size: int, depth: int, num_head_channels: int,
                      mlp_ratio: float, dropout: float, attention_window: int | None) -> None:
    """Raise a ``ValueError`` naming the first inconsistent constructor option."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"network.spatial_dims: must be 2 or 3, got {spatial_dims}")
    for option, value in (("patch_size", patch_size), ("hidden_size", hidden_size), ("depth", depth),
                          ("num_head_channels", num_head_channels)):
        if value < 1:
            raise ValueError(f"network.{option}: must be >= 1, got {value}")
    if hidden_size % num_head_channels:
        raise ValueError(f"network.num_head_channels: {num_head_channels} does not divide hidden_size {hidden_size}")
    if mlp_ratio <= 0:
        raise ValueError(f"network.mlp_ratio: must be > 0, got {mlp_ratio}")
    check_dropout(dropout)
    if attention_window is not None and attention_window < 1:
        raise ValueError(f"network.attention_window: must be >= 1 token per axis (or null: global), "
                         f"got {attention_window}")


@BACKBONES.register("dit")
class DiT(nn.Module):
    """Diffusion Transformer: ``forward(x [B, C, *spatial], t [B], cond) -> [B, C_out, *spatial]``.

    ``cond`` is None, a conditioning image or a dict (``cdm4mi.models.conditioning``); ``in_channels`` counts
    channels after stacking (noisy target + conditioning image). Every side of ``x`` must divide by
    ``patch_size`` (pixels / voxels per patch side); the token grid is ``spatial / patch_size``.
    ``hidden_size`` is the token width, ``depth`` the number of blocks, ``num_head_channels`` the width of
    one attention head, ``mlp_ratio`` the MLP width over ``hidden_size``, ``dropout`` acts in the MLPs.
    ``attention_window`` is in tokens per axis (``patch_size`` pixels each); None is global attention.

    Conditioning options as the U-Net's: ``cond_channels`` (default ``in_channels - out_channels`` for
    concat/hybrid/adaln, 1 for crossattn), ``vector_dim``, ``num_classes``, ``cond_drop_prob``
    (classifier-free guidance training), ``cond_patch_size``/``token_dim``/``max_cond_tokens`` (the image
    tokenizer of crossattn/hybrid). Defaults are DiT-S/2 (about 32M parameters).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1, patch_size: int = 2,
                 hidden_size: int = 384, depth: int = 12, num_head_channels: int = 64, mlp_ratio: float = 4.0,
                 dropout: float = 0.0,
                 conditioning_key: ConditioningKey = "concat",
                 cond_channels: int | None = None, vector_dim: int = 0, num_classes: int = 0,
                 cond_drop_prob: float = 0.0, cond_patch_size: int = 8, token_dim: int = 128,
                 max_cond_tokens: int = 256, attention_window: int | None = None,
                 gradient_checkpointing: bool = False):
        super().__init__()
        _validate_options(spatial_dims, patch_size, hidden_size, depth, num_head_channels, mlp_ratio, dropout,
                          attention_window)
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.conditioning_key, self.patch_size, self.hidden_size = conditioning_key, patch_size, hidden_size
        self.size_multiple = patch_size  # every side of the input must divide by this (as the U-Net's)
        self.gradient_checkpointing, self.attention_window = gradient_checkpointing, attention_window
        self.cond_drop_prob = cond_drop_prob
        self.time_embedding = TimestepEmbedding(TIME_FREQUENCIES, hidden_size)
        if cond_channels is None:
            cond_channels = default_cond_channels(conditioning_key, in_channels, out_channels)
        self.condition = ConditionEncoder(spatial_dims, conditioning_key, cond_channels, vector_dim, num_classes,
                                          hidden_size, token_dim, cond_patch_size, max_cond_tokens, cond_drop_prob)
        context_channels = token_dim if self.condition.uses_tokens else None
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_embedding = conv(in_channels, hidden_size, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_head_channels, mlp_ratio, dropout, attention_window, context_channels)
            for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size**spatial_dims * out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        """Predict from noisy ``x`` at timesteps ``t`` (integer or fractional; a scalar is shared by the batch)."""
        check_spatial_shape(x, self.spatial_dims, self.patch_size, "network.patch_size")
        condition = self.condition(cond, x)
        c = self.time_embedding(batch_timesteps(t, x))
        if condition.embedding is not None:
            c = c + condition.embedding
        grid_image = self.patch_embedding(stack_condition(x, condition.image, self.in_channels))  # [B, hidden, *grid]
        grid = tuple(grid_image.shape[2:])
        # Positions count within attention windows: a model trained on window-sized crops sees at inference
        # on a whole slice exactly the positions it was trained with, in every window.
        positions = grid_position_embedding(grid, self.hidden_size, x.device, self.attention_window)
        positions = positions.to(grid_image.dtype)
        tokens = grid_image.flatten(2).transpose(1, 2) + positions
        for block in self.blocks:
            tokens = self._run(block, tokens, c, grid, condition.tokens)
        return unpatchify(self.final_layer(tokens, c), self.patch_size, tuple(x.shape[2:]), self.out_channels)

    def _run(self, block: DiTBlock, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, ...],
             context: torch.Tensor | None) -> torch.Tensor:
        # Checkpointing trades a second forward pass for not storing activations; only useful when training.
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, c, grid, context, use_reentrant=False)
        return block(tokens, c, grid, context)
