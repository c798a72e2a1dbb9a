"""Checks and preparation every image backbone shares: level widths, timesteps, spatial sizes, stacking."""

from __future__ import annotations

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
