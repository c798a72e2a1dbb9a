"""Conditional U-Net for 2D and 3D images (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM").

One code path serves both dimensionalities: ``spatial_dims`` picks ``Conv2d``/``Conv3d``; every other
operation (GroupNorm, interpolation, attention over flattened voxels) is dimension-agnostic.
How the condition enters is ``conditioning_key`` (see ``cdm4mi.models.conditioning``): ``concat`` stacks the
conditioning image on the input channels; ``crossattn`` lets every attention level attend to tokens of the
image and of metadata; ``hybrid`` does both; ``adaln`` turns every residual block's normalization into
AdaLN-Zero (scale, shift and gate from the time + condition embedding, zero at initialisation, so each
block starts as the identity; Peebles & Xie 2023). Self-attention runs within windows of at most
``attention_window`` tokens per axis (``cdm4mi.models.attention``).
``pixel_unshuffle: f`` folds every f x f (x f) block of the input into channels before the first level and
unfolds the output the same way (space-to-depth stem and depth-to-space head, as FFDNet's; Zhang et al. 2018):
the levels run on an image f times smaller per side, about f^d times fewer operations.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cdm4mi.models.attention import GridAttention, zeroed
from cdm4mi.models.conditioning import ConditionEncoder, default_cond_channels
from cdm4mi.models.embeddings import TimestepEmbedding
from cdm4mi.models.inputs import (
    batch_timesteps,
    check_level_widths,
    check_spatial_shape,
    depth_to_space,
    space_to_depth,
    stack_condition,
)
from cdm4mi.models.options import ConditioningKey, PixelUnshuffle, check_dropout
from cdm4mi.models.registry import BACKBONES


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """Same-padded convolution of the right dimensionality."""
    conv_type = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv_type(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second normalization modulated by the embedding.

    FiLM (default): ``norm(h) * (1 + scale) + shift``, the last convolution zeroed so the block starts as
    its skip path. AdaLN-Zero (``adaln``): the same plus a gate on the residual branch; scale, shift and
    gate come from a zero-initialised projection, so again the block starts as its skip path.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
                 norm_groups: int, adaln: bool = False):
        super().__init__()
        self.adaln = adaln
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = _conv(spatial_dims, in_channels, out_channels)
        projection = nn.Linear(emb_dim, (3 if adaln else 2) * out_channels)
        self.emb_proj = nn.Sequential(nn.SiLU(), zeroed(projection) if adaln else projection)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        # With AdaLN-Zero the gate starts at zero; zeroing conv2 as well would leave both without gradient.
        conv2 = _conv(spatial_dims, out_channels, out_channels)
        self.conv2 = conv2 if adaln else zeroed(conv2)
        self.skip = nn.Identity() if in_channels == out_channels else _conv(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        modulation = self.emb_proj(emb)
        modulation = modulation.view(*modulation.shape, *[1] * (x.ndim - 2))  # broadcast over space
        scale, shift, *gate = modulation.chunk(3 if self.adaln else 2, dim=1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h) * (1 + scale) + shift)))
        return self.skip(x) + (gate[0] * h if self.adaln else h)


class ResAttnBlock(nn.Module):
    """A ResBlock, then attention if ``attention`` (windowed self-, optional cross-), then an optional
    2x nearest upsample + conv."""

    def __init__(self, res: ResBlock, attention: Optional[GridAttention] = None,
                 upsample: Optional[nn.Module] = None):
        super().__init__()
        self.res, self.attention, self.upsample = res, attention, upsample

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.res(h, emb)
        if self.attention is not None:
            h = self.attention(h, context)
        if self.upsample is not None:
            h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


class Downsample(nn.Module):
    """Strided 3x3 convolution halving every spatial size (takes ``emb`` only to match the other blocks)."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.conv = _conv(spatial_dims, channels, channels, stride=2)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conv(h)


def _validate_options(spatial_dims: int, base_channels: int, channel_mult: list[int], attention_levels: list[bool],
                      num_head_channels: int, dropout: float, norm_groups: int, conditioning_key: Optional[str],
                      attention_window: Optional[int]) -> None:
    """Raise a ``ValueError`` naming the first inconsistent constructor option."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"network.spatial_dims: must be 2 or 3, got {spatial_dims}")
    if not channel_mult or min(channel_mult) < 1 or base_channels < 1:
        raise ValueError(f"network.channel_mult: need one or more positive multipliers and base_channels >= 1, "
                         f"got {channel_mult} and {base_channels}")
    check_dropout(dropout)
    if len(attention_levels) != len(channel_mult):
        raise ValueError(f"network.attention_levels: needs one flag per channel_mult level ({len(channel_mult)}), "
                         f"got {len(attention_levels)}")
    if conditioning_key in ("crossattn", "hybrid") and not any(attention_levels):
        raise ValueError(f"network.attention_levels: conditioning_key '{conditioning_key}' attends to the condition "
                         "at attention levels; switch at least one on")
    if attention_window is not None and attention_window < 1:
        raise ValueError(f"network.attention_window: must be >= 1 token per axis (or null: global), "
                         f"got {attention_window}")
    check_level_widths([base_channels * mult for mult in channel_mult], attention_levels, norm_groups,
                       num_head_channels)


@BACKBONES.register("unet")
class ConditionalUNet(nn.Module):
    """Denoising U-Net: ``forward(x [B, C, *spatial], t [B], cond) -> [B, C_out, *spatial]``.

    ``cond`` is None, a conditioning image or a dict (``cdm4mi.models.conditioning``). ``in_channels``
    counts channels after stacking (noisy target + conditioning image). Each of the ``len(channel_mult)``
    levels has ``num_res_blocks`` residual blocks (plus one more in the decoder, which takes the extra
    skip), attention where ``attention_levels`` is set, and halves/doubles the size.

    Conditioning options: ``cond_channels`` (channels of the conditioning image; default
    ``in_channels - out_channels`` for concat/hybrid/adaln, 1 for crossattn), ``vector_dim`` (metadata
    vector size), ``num_classes`` (class labels), ``cond_drop_prob`` (classifier-free guidance training),
    ``cond_patch_size``/``token_dim``/``max_cond_tokens`` (the image tokenizer of crossattn/hybrid).

    ``condition_skip``: the output is the network's plus the conditioning image (its centre ``out_channels``
    channels, the slice itself for a 2.5D slab). For an x0-predicting denoiser this is residual learning
    (DnCNN, RED-CNN): with the zero-initialised head the untrained model returns its low-dose input, and the
    network only learns the correction, which few training scans teach far better than the whole image.

    ``pixel_unshuffle`` (f, default 1: off): the stacked input [B, C, *S] enters as [B, C * f^d, *S / f] and the
    head's [B, C_out * f^d, *S / f] leaves as [B, C_out, *S] (``space_to_depth`` / ``depth_to_space``); every
    side must then divide by ``f * 2^(levels - 1)`` (``size_multiple``). The condition (and ``condition_skip``)
    stays at full resolution. With f = 2 a 512 x 512 slice runs its first level at 256 x 256: 5-6x faster on 2 CPU
    cores (benchmarks/bench_denoise.py).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1, base_channels: int = 64,
                 channel_mult: list[int] = [1, 2, 4], num_res_blocks: int = 2,  # noqa: B006 - copied, never mutated
                 attention_levels: list[bool] = [False, False, True], num_head_channels: int = 32,  # noqa: B006
                 dropout: float = 0.0, norm_groups: int = 32,
                 conditioning_key: ConditioningKey = "concat",
                 cond_channels: Optional[int] = None, vector_dim: int = 0, num_classes: int = 0,
                 cond_drop_prob: float = 0.0, cond_patch_size: int = 8, token_dim: int = 128,
                 max_cond_tokens: int = 256, attention_window: Optional[int] = None,
                 gradient_checkpointing: bool = False, condition_skip: bool = False,
                 pixel_unshuffle: PixelUnshuffle = 1):
        super().__init__()
        channel_mult, attention_levels = list(channel_mult), list(attention_levels)
        _validate_options(spatial_dims, base_channels, channel_mult, attention_levels, num_head_channels, dropout,
                          norm_groups, conditioning_key, attention_window)
        self.spatial_dims, self.in_channels, self.conditioning_key = spatial_dims, in_channels, conditioning_key
        self.pixel_unshuffle = pixel_unshuffle
        self.size_multiple = pixel_unshuffle * 2 ** (len(channel_mult) - 1)
        self.gradient_checkpointing = gradient_checkpointing
        self.cond_drop_prob = cond_drop_prob
        if condition_skip and conditioning_key not in ("concat", "hybrid", "adaln"):
            raise ValueError(f"network.condition_skip: needs a conditioning image of the output's size "
                             f"(conditioning_key concat, hybrid or adaln), not {conditioning_key!r}")
        self.condition_skip, self.out_channels = condition_skip, out_channels
        emb_dim = 4 * base_channels
        self.time_embedding = TimestepEmbedding(base_channels, emb_dim)
        if cond_channels is None:
            cond_channels = default_cond_channels(conditioning_key, in_channels, out_channels)
        self.condition = ConditionEncoder(spatial_dims, conditioning_key, cond_channels, vector_dim, num_classes,
                                          emb_dim, token_dim, cond_patch_size, max_cond_tokens, cond_drop_prob)
        context_channels = token_dim if self.condition.uses_tokens else None
        adaln = conditioning_key == "adaln"

        def res_attn(c_in: int, c_out: int, attend: bool, upsample: bool = False) -> ResAttnBlock:
            attention = None
            if attend:
                attention = GridAttention(c_out, num_head_channels, norm_groups, attention_window, context_channels)
            return ResAttnBlock(ResBlock(spatial_dims, c_in, c_out, emb_dim, dropout, norm_groups, adaln), attention,
                                _conv(spatial_dims, c_out, c_out) if upsample else None)

        folded = pixel_unshuffle**spatial_dims  # channels per input channel after space-to-depth
        self.conv_in = _conv(spatial_dims, in_channels * folded, base_channels)
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
                                  zeroed(_conv(spatial_dims, channels, out_channels * folded)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float, cond: object = None) -> torch.Tensor:
        """Predict from noisy ``x`` at timesteps ``t`` (integer or fractional; a scalar is shared by the batch)."""
        check_spatial_shape(x, self.spatial_dims, self.size_multiple,
                            "pixel_unshuffle * 2 ** (len(channel_mult) - 1)" if self.pixel_unshuffle > 1
                            else "2 ** (len(channel_mult) - 1)")
        condition = self.condition(cond, x)
        h = stack_condition(x, condition.image, self.in_channels)
        emb = self.time_embedding(batch_timesteps(t, x))
        if condition.embedding is not None:
            emb = emb + condition.embedding
        context = condition.tokens
        if self.pixel_unshuffle > 1:
            h = space_to_depth(h, self.pixel_unshuffle)
        h = self.conv_in(h)
        skips = [h]
        for block in self.encoder:
            h = self._run(block, h, emb, context)
            skips.append(h)
        for block in self.middle:
            h = self._run(block, h, emb, context)
        for block in self.decoder:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
        out = self.head(h)
        if self.pixel_unshuffle > 1:
            out = depth_to_space(out, self.pixel_unshuffle)
        if self.condition_skip and condition.image is not None:
            centre = (condition.image.shape[1] - self.out_channels) // 2
            return out + condition.image[:, centre : centre + self.out_channels]
        return out

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        # Checkpointing trades a second forward pass for not storing activations; only useful when training.
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)
