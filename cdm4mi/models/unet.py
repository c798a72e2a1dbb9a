"""Conditional U-Net for 2D and 3D images (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM").

One code path serves both dimensionalities: ``spatial_dims`` picks ``Conv2d``/``Conv3d``; every other
operation (GroupNorm, interpolation, attention over flattened voxels) is dimension-agnostic.
Conditioning images are concatenated to the noisy input along channels (``conditioning_key="concat"``).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cdm4mi.models.embeddings import TimestepEmbedding
from cdm4mi.models.registry import BACKBONES

CONDITIONING_KEYS = (None, "concat")


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """Same-padded convolution of the right dimensionality."""
    conv_type = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv_type(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def _zeroed(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it ends starts as the identity (ADM)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with FiLM time conditioning: ``norm(h) * (1 + scale) + shift``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
                 norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = _conv(spatial_dims, in_channels, out_channels)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zeroed(_conv(spatial_dims, out_channels, out_channels))
        self.skip = nn.Identity() if in_channels == out_channels else _conv(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        film = self.emb_proj(emb)
        scale, shift = film.view(*film.shape, *[1] * (x.ndim - 2)).chunk(2, dim=1)  # broadcast over space
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.dropout(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels/voxels of each sample, as a residual branch."""

    def __init__(self, channels: int, num_head_channels: int, norm_groups: int):
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = _zeroed(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, N, C]
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
        return x + self.out(attended).transpose(1, 2).reshape(x.shape)


class ResAttnBlock(nn.Module):
    """A ResBlock, then self-attention if ``attention``, then an optional 2x nearest upsample + conv."""

    def __init__(self, res: ResBlock, attention: Optional[SelfAttention] = None, upsample: Optional[nn.Module] = None):
        super().__init__()
        self.res, self.attention, self.upsample = res, attention, upsample

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        if self.upsample is not None:
            h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


class Downsample(nn.Module):
    """Strided 3x3 convolution halving every spatial size (takes ``emb`` only to match the other blocks)."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.conv = _conv(spatial_dims, channels, channels, stride=2)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


def _validate_options(spatial_dims: int, base_channels: int, channel_mult: list[int], attention_levels: list[bool],
                      num_head_channels: int, dropout: float, norm_groups: int,
                      conditioning_key: Optional[str]) -> None:
    """Raise a ``ValueError`` naming the first inconsistent constructor option."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"network.spatial_dims: must be 2 or 3, got {spatial_dims}")
    if conditioning_key not in CONDITIONING_KEYS:
        raise ValueError(f"network.conditioning_key: must be one of {list(CONDITIONING_KEYS)}, "
                         f"got {conditioning_key!r}")
    if not channel_mult or min(channel_mult) < 1 or base_channels < 1:
        raise ValueError(f"network.channel_mult: need one or more positive multipliers and base_channels >= 1, "
                         f"got {channel_mult} and {base_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"network.dropout: must lie in [0, 1), got {dropout}")
    if len(attention_levels) != len(channel_mult):
        raise ValueError(f"network.attention_levels: needs one flag per channel_mult level ({len(channel_mult)}), "
                         f"got {len(attention_levels)}")
    for mult, attend in zip(channel_mult, attention_levels):
        channels = base_channels * mult
        if channels % norm_groups:
            raise ValueError(f"network.norm_groups: {norm_groups} does not divide level width {channels} "
                             f"(base_channels * channel_mult)")
        if attend and channels % num_head_channels:
            raise ValueError(f"network.num_head_channels: {num_head_channels} does not divide attention level "
                             f"width {channels}")


@BACKBONES.register("unet")
class ConditionalUNet(nn.Module):
    """Denoising U-Net: ``forward(x [B, C, *spatial], t [B], cond [B, C_cond, *spatial]) -> [B, C_out, *spatial]``.

    ``in_channels`` counts channels after conditioning (noisy target + conditioning image). Each of the
    ``len(channel_mult)`` levels has ``num_res_blocks`` residual blocks (plus one more in the decoder, which
    takes the extra skip), self-attention where ``attention_levels`` is set, and halves/doubles the size.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1, base_channels: int = 64,
                 channel_mult: list[int] = [1, 2, 4], num_res_blocks: int = 2,  # noqa: B006 - copied, never mutated
                 attention_levels: list[bool] = [False, False, True], num_head_channels: int = 32,  # noqa: B006
                 dropout: float = 0.0, norm_groups: int = 32, conditioning_key: Optional[Literal["concat"]] = "concat",
                 gradient_checkpointing: bool = False):
        super().__init__()
        channel_mult, attention_levels = list(channel_mult), list(attention_levels)
        _validate_options(spatial_dims, base_channels, channel_mult, attention_levels, num_head_channels, dropout,
                          norm_groups, conditioning_key)
        self.spatial_dims, self.in_channels, self.conditioning_key = spatial_dims, in_channels, conditioning_key
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = 4 * base_channels
        self.time_embedding = TimestepEmbedding(base_channels, emb_dim)

        def res_attn(c_in: int, c_out: int, attend: bool, upsample: bool = False) -> ResAttnBlock:
            return ResAttnBlock(ResBlock(spatial_dims, c_in, c_out, emb_dim, dropout, norm_groups),
                                SelfAttention(c_out, num_head_channels, norm_groups) if attend else None,
                                _conv(spatial_dims, c_out, c_out) if upsample else None)

        self.conv_in = _conv(spatial_dims, in_channels, base_channels)
        self.encoder, skip_channels, channels = nn.ModuleList(), [base_channels], base_channels
        for level, (mult, attend) in enumerate(zip(channel_mult, attention_levels)):
            for _ in range(num_res_blocks):
                self.encoder.append(res_attn(channels, base_channels * mult, attend))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level < len(channel_mult) - 1:
                self.encoder.append(Downsample(spatial_dims, channels))
                skip_channels.append(channels)

        self.middle = nn.ModuleList([res_attn(channels, channels, attention_levels[-1]),
                                     res_attn(channels, channels, False)])

        self.decoder = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for block in range(num_res_blocks + 1):
                last_of_level = block == num_res_blocks
                self.decoder.append(res_attn(channels + skip_channels.pop(), base_channels * channel_mult[level],
                                             attention_levels[level], upsample=last_of_level and level > 0))
                channels = base_channels * channel_mult[level]

        self.head = nn.Sequential(nn.GroupNorm(norm_groups, channels), nn.SiLU(),
                                  _zeroed(_conv(spatial_dims, channels, out_channels)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict from noisy ``x`` at timesteps ``t`` (integer or fractional; a scalar is shared by the batch)."""
        self._check_spatial_shape(x)
        h = self._condition(x, cond)
        emb = self.time_embedding(self._timesteps(t, x))
        h = self.conv_in(h)
        skips = [h]
        for block in self.encoder:
            h = self._run(block, h, emb)
            skips.append(h)
        for block in self.middle:
            h = self._run(block, h, emb)
        for block in self.decoder:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Checkpointing trades a second forward pass for not storing activations; only useful when training.
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _check_spatial_shape(self, x: torch.Tensor) -> None:
        """Every level halves the size, so skips only line up when each side divides by ``size_multiple``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"network.spatial_dims: model is {self.spatial_dims}D, expected x of shape "
                             f"[B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W], got {tuple(x.shape)}")
        if any(size % self.size_multiple for size in x.shape[2:]):
            padded = tuple(-(-size // self.size_multiple) * self.size_multiple for size in x.shape[2:])
            raise ValueError(f"x: spatial size {tuple(x.shape[2:])} must be divisible by {self.size_multiple} "
                             f"(2 ** (len(channel_mult) - 1)); pad to {padded} or crop")

    def _condition(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """Validate ``cond`` and return the network input; the one place conditioning modes live."""
        if self.conditioning_key is None:
            if cond is not None:
                raise ValueError("cond: network.conditioning_key is None (unconditional) but a cond tensor was given")
            inputs = x
        else:  # "concat"
            if cond is None:
                raise ValueError("cond: network.conditioning_key 'concat' expects a conditioning image "
                                 f"[B, C_cond, {', '.join(map(str, x.shape[2:]))}], got None")
            if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
                raise ValueError(f"cond: shape {tuple(cond.shape)} must match x {tuple(x.shape)} "
                                 f"in batch and spatial sizes")
            inputs = torch.cat([x, cond.to(x.dtype)], dim=1)
        if inputs.shape[1] != self.in_channels:
            given = f"x ({x.shape[1]})" + (f" + cond ({cond.shape[1]})" if cond is not None else "")
            raise ValueError(f"network.in_channels: is {self.in_channels} but {given} give {inputs.shape[1]} channels")
        return inputs

    @staticmethod
    def _timesteps(t: torch.Tensor | int | float, x: torch.Tensor) -> torch.Tensor:
        """Timesteps as a [B] tensor on ``x``'s device; a scalar is broadcast to the batch."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or {x.shape[0]} timesteps (one per sample), "
                             f"got shape {tuple(t.shape)}")
        return t
