"""Multi-head attention over image grids, bounded in cost by attending within windows.

Self-attention over all pixels of a 512x512 feature map is 262,144 tokens: quadratic cost that no CPU
(and few GPUs) can afford. ``GridAttention`` therefore attends within non-overlapping windows of at most
``window`` tokens per axis (Swin-style, no shift). A model trained on crops no larger than the window
sees whole-map attention; at inference on a full slice each window sees the same extent as in training,
and the cost grows linearly with the image. ``window=None`` is global attention.

Every product goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where the device has them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zeroed(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it ends starts as the identity (ADM, DiT)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class Attention(nn.Module):
    """Multi-head attention of ``tokens`` [B, N, C] to ``context`` [B, M, C_ctx] (to themselves without it).

    Returns [B, N, C] (the residual branch only; the output projection starts at zero).
    """

    def __init__(self, channels: int, num_head_channels: int, context_channels: int | None = None):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"network.num_head_channels: {num_head_channels} does not divide width {channels}")
        self.num_heads = channels // num_head_channels
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(context_channels or channels, 2 * channels)
        self.out = zeroed(nn.Linear(channels, channels))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask`` [B, M] bool: True where a key may be attended to."""
        context = tokens if context is None else context
        q = self.to_q(tokens).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, N, c]
        k, v = self.to_kv(context).unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(attended.transpose(1, 2).flatten(2))


def window_sizes(spatial: tuple[int, ...], window: int | None) -> tuple[int, ...]:
    """Per-axis window: ``window`` tokens, or the whole axis when it is shorter (or ``window`` is None)."""
    return tuple(size if window is None else min(size, window) for size in spatial)


def to_windows(grid: torch.Tensor, window: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, C, *S] -> (tokens [B * n_windows, prod(window), C], key mask or None).

    Each axis is padded up to a multiple of its window; the mask marks real (unpadded) tokens. No window
    is all padding, because each axis is padded by less than one window.
    """
    spatial = tuple(grid.shape[2:])
    sizes = window_sizes(spatial, window)
    pads = [-s % w for s, w in zip(spatial, sizes)]
    if not any(pads):
        return _split(grid, sizes), None
    padding = [p for pad in reversed(pads) for p in (0, pad)]
    valid = F.pad(torch.ones((1, 1, *spatial), dtype=torch.bool, device=grid.device), padding)
    tokens = _split(F.pad(grid, padding), sizes)
    mask = _split(valid, sizes)[..., 0].repeat(grid.shape[0], 1)
    return tokens, mask


def from_windows(tokens: torch.Tensor, spatial: tuple[int, ...], window: int | None) -> torch.Tensor:
    """The inverse of ``to_windows``: [B * n_windows, prod(window), C] -> [B, C, *S]."""
    sizes = window_sizes(spatial, window)
    padded = [s + (-s % w) for s, w in zip(spatial, sizes)]
    counts = [p // w for p, w in zip(padded, sizes)]
    dims = len(spatial)
    channels = tokens.shape[-1]
    grid = tokens.reshape(-1, *counts, *sizes, channels)  # [B, n_1.., w_1.., C]
    order = [0, 2 * dims + 1] + [axis for d in range(dims) for axis in (1 + d, 1 + dims + d)]
    grid = grid.permute(*order).reshape(-1, channels, *padded)
    return grid[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def _split(grid: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """[B, C, *S] (each S divisible by its window) -> [B * n_windows, prod(sizes), C]."""
    batch, channels, *spatial = grid.shape
    dims = len(spatial)
    shape = [batch, channels] + [n for s, w in zip(spatial, sizes) for n in (s // w, w)]
    # [B, C, n_1, w_1, n_2, w_2, ...] -> [B, n_1, n_2, ..., w_1, w_2, ..., C]
    order = [0] + [2 + 2 * d for d in range(dims)] + [3 + 2 * d for d in range(dims)] + [1]
    return grid.reshape(shape).permute(*order).reshape(-1, math.prod(sizes), channels)


def windowed_self_attention(attention: Attention, grid: torch.Tensor, window: int | None) -> torch.Tensor:
    """``attention`` of every position of ``grid`` [B, C, *S] to the positions of its window: [B, C, *S]."""
    tokens, mask = to_windows(grid, window)
    return from_windows(attention(tokens, key_mask=mask), tuple(grid.shape[2:]), window)


class GridAttention(nn.Module):
    """Residual self-attention within windows of a [B, C, *S] grid, then (optionally) cross-attention of
    every position to conditioning tokens [B, M, context_channels]; GroupNorm before each."""

    def __init__(self, channels: int, num_head_channels: int, norm_groups: int, window: int | None,
                 context_channels: int | None = None):
        super().__init__()
        self.window = window
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.self_attention = Attention(channels, num_head_channels)
        self.cross_norm = nn.GroupNorm(norm_groups, channels) if context_channels else None
        self.cross_attention = Attention(channels, num_head_channels, context_channels) if context_channels else None

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = h + windowed_self_attention(self.self_attention, self.norm(h), self.window)
        if self.cross_attention is None:
            return h
        if context is None:
            raise ValueError("cross-attention needs conditioning tokens, got None")
        queries = self.cross_norm(h).flatten(2).transpose(1, 2)  # [B, N, C]: no windows needed, M is small
        attended = self.cross_attention(queries, context)
        return h + attended.transpose(1, 2).reshape(h.shape)
