"""Checks and preparation every image backbone shares: level widths, timesteps, spatial sizes, stacking,
and the space-to-depth rearrangement (FFDNet's pixel unshuffle, DiT's patches)."""

from __future__ import annotations

import math

import torch


def batch_timesteps(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Timesteps as a [B] tensor on ``x``'s device; a scalar is broadcast to the batch."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t: expected a scalar or {x.shape[0]} timesteps (one per sample), got shape {tuple(t.shape)}")
    return t


def check_spatial_shape(x: torch.Tensor, spatial_dims: int, multiple: int, reason: str) -> None:
    """``x`` is ``[B, C, *spatial]`` of the model's dimensionality, every side divisible by ``multiple``
    (``reason`` says why, e.g. ``'2 ** (len(channel_mult) - 1)'``)."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(f"network.spatial_dims: model is {spatial_dims}D, expected x of shape "
                         f"[B, C, {'D, ' if spatial_dims == 3 else ''}H, W], got {tuple(x.shape)}")
    if any(size % multiple for size in x.shape[2:]):
        padded = tuple(-(-size // multiple) * multiple for size in x.shape[2:])
        raise ValueError(f"x: spatial size {tuple(x.shape[2:])} must be divisible by {multiple} ({reason}); "
                         f"pad to {padded} or crop")


def stack_condition(x: torch.Tensor, image: torch.Tensor | None, in_channels: int) -> torch.Tensor:
    """The network input: ``x`` with the conditioning image (if the mode stacks one) on the channels."""
    inputs = x if image is None else torch.cat([x, image], dim=1)
    if inputs.shape[1] != in_channels:
        given = f"x ({x.shape[1]})" + (f" + cond ({image.shape[1]})" if image is not None else "")
        raise ValueError(f"network.in_channels: is {in_channels} but {given} give {inputs.shape[1]} channels")
    return inputs


def check_level_widths(widths: list[int], attends: list[bool], norm_groups: int, num_head_channels: int,
                       attention_note: str = "") -> None:
    """Every level width divides into ``norm_groups`` groups, and attention levels into heads."""
    for width, attend in zip(widths, attends):
        if width % norm_groups:
            raise ValueError(f"network.norm_groups: {norm_groups} does not divide level width {width} "
                             f"(base_channels * channel_mult)")
        if attend and width % num_head_channels:
            raise ValueError(f"network.num_head_channels: {num_head_channels} does not divide attention level "
                             f"width {width}{attention_note}")


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, *S] -> [B, N, C * patch_size^d]: one row per patch, patches in raster order of the grid.

    Features are ordered (channel, then position within the patch, axis by axis): the order in which a
    strided convolution's weight [hidden, C, p, ..., p] flattens, so ``conv(x)`` is a linear map of a row.
    """
    batch, channels, *spatial = x.shape
    if any(size % patch_size for size in spatial):
        raise ValueError(f"x: spatial size {tuple(spatial)} must be divisible by network.patch_size {patch_size}")
    dims = len(spatial)
    grid = [size // patch_size for size in spatial]
    shape = [batch, channels] + [n for count in grid for n in (count, patch_size)]
    # [B, C, g_1, p, g_2, p, ...] -> [B, g_1, g_2, ..., C, p, p, ...]
    order = [0] + [2 + 2 * d for d in range(dims)] + [1] + [3 + 2 * d for d in range(dims)]
    return x.reshape(shape).permute(order).reshape(batch, math.prod(grid), channels * patch_size**dims)


def unpatchify(tokens: torch.Tensor, patch_size: int, spatial: tuple[int, ...], channels: int) -> torch.Tensor:
    """The inverse of ``patchify``: [B, N, C * patch_size^d] -> [B, C, *spatial] (sizes in pixels / voxels)."""
    dims = len(spatial)
    grid = [size // patch_size for size in spatial]
    expected = (math.prod(grid), channels * patch_size**dims)
    if any(size % patch_size for size in spatial) or tuple(tokens.shape[1:]) != expected:
        raise ValueError(f"tokens: {tuple(tokens.shape)} are not {patch_size}-patches of a {channels}-channel "
                         f"image of size {tuple(spatial)} (expected [B, {expected[0]}, {expected[1]}])")
    patches = tokens.reshape(tokens.shape[0], *grid, channels, *[patch_size] * dims)
    # [B, g_1, ..., C, p, ...] -> [B, C, g_1, p, g_2, p, ...]
    order = [0, 1 + dims] + [axis for d in range(dims) for axis in (1 + d, 2 + dims + d)]
    return patches.permute(order).reshape(tokens.shape[0], channels, *spatial)


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, *S] -> [B, C * factor^d, *S / factor]: each factor^d block of pixels / voxels becomes channels
    (in 2D exactly ``F.pixel_unshuffle``); ``patchify`` with the patches laid back on their grid."""
    batch, channels, *spatial = x.shape
    grid = [size // factor for size in spatial]
    return patchify(x, factor).transpose(1, 2).reshape(batch, channels * factor ** len(spatial), *grid)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse of ``space_to_depth``: [B, C * factor^d, *G] -> [B, C, *G * factor] (``F.pixel_shuffle`` in 2D)."""
    batch, features, *grid = x.shape
    channels = features // factor ** len(grid)
    return unpatchify(x.flatten(2).transpose(1, 2), factor, tuple(size * factor for size in grid), channels)
