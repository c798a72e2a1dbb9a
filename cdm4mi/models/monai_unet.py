"""MONAI's ``DiffusionModelUNet`` (Pinaya et al. 2022, after Rombach et al. 2022) as the backbone ``monai_unet``.

A config switches ``network.name: unet`` to ``monai_unet`` and keeps its options: ``base_channels`` *
``channel_mult`` become MONAI's ``channels``, ``norm_groups`` its ``norm_num_groups``; ``spatial_dims``,
``in_channels`` (after stacking), ``out_channels``, ``num_res_blocks``, ``attention_levels`` and
``num_head_channels`` (width of one head) mean the same. The condition goes through cdm4mi's own
``ConditionEncoder`` (``cdm4mi.models.conditioning``), so ``cond``, classifier-free guidance dropout and the
null condition behave as with ``unet``:

* ``concat`` / ``hybrid``: the conditioning image is stacked on the input channels;
* ``crossattn`` / ``hybrid``: the condition's tokens are MONAI's ``context`` (``with_conditioning=True``,
  ``cross_attention_dim=token_dim``);
* ``concat`` with ``vector_dim`` / ``num_classes``: the condition embedding is added to the time embedding
  through MONAI's class-embedding hook (``class_labels``), whose lookup table is replaced by the identity.

What differs from ``unet`` (so the two are not weight-compatible):

* MONAI's middle block always has attention (cross-attention too when conditioning by tokens), whatever
  ``attention_levels[-1]``; so ``num_head_channels`` must divide the deepest width, and ``crossattn`` works
  with every level's attention off.
* Attention is global: ``attention_window`` must be null.
* Residual blocks add the time embedding as a shift (no FiLM scale) and have no dropout; ``dropout`` maps to
  MONAI's ``dropout_cattn``, which acts only in the transformer blocks of ``crossattn`` / ``hybrid``.
* With tokens, each attention level is a transformer block (self-attention, cross-attention, GEGLU MLP).
* No ``adaln`` conditioning and no ``gradient_checkpointing``.
"""

from __future__ import annotations

import torch
from torch import nn

from cdm4mi.models.conditioning import ConditionEncoder, default_cond_channels
from cdm4mi.models.inputs import (
    batch_timesteps,
    check_level_widths,
    check_spatial_shape,
    stack_condition,
)
from cdm4mi.models.options import ConditioningKey, check_dropout
from cdm4mi.models.registry import BACKBONES


def _validate_options(spatial_dims: int, base_channels: int, channel_mult: list[int], attention_levels: list[bool],
                      num_head_channels: int, dropout: float, norm_groups: int, conditioning_key: str | None,
                      attention_window: int | None, gradient_checkpointing: bool) -> None:
    """Raise a ``ValueError`` naming the first option MONAI's network cannot take or would take differently."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"network.spatial_dims: must be 2 or 3, got {spatial_dims}")
    if conditioning_key == "adaln":
        raise ValueError("network.conditioning_key: 'adaln' is not available with monai_unet: MONAI's "
                         "DiffusionModelUNet has no AdaLN (its residual blocks only add the time embedding); "
                         "use concat, crossattn or hybrid, or name: unet for adaln")
    if not channel_mult or min(channel_mult) < 1 or base_channels < 1:
        raise ValueError(f"network.channel_mult: need one or more positive multipliers and base_channels >= 1, "
                         f"got {channel_mult} and {base_channels}")
    if len(attention_levels) != len(channel_mult):
        raise ValueError(f"network.attention_levels: needs one flag per channel_mult level ({len(channel_mult)}), "
                         f"got {len(attention_levels)}")
    check_dropout(dropout)
    if dropout > 0 and conditioning_key not in ("crossattn", "hybrid"):
        raise ValueError(f"network.dropout: monai_unet has dropout only in its cross-attention transformer blocks "
                         f"(conditioning_key crossattn or hybrid), not with {conditioning_key!r}; set dropout: 0.0, "
                         "or name: unet for dropout in the residual blocks")
    if attention_window is not None:
        raise ValueError(f"network.attention_window: monai_unet attends globally; set attention_window: null "
                         f"(got {attention_window}), or name: unet for windowed attention")
    if gradient_checkpointing:
        raise ValueError("network.gradient_checkpointing: MONAI's DiffusionModelUNet has no gradient checkpointing; "
                         "set it false, or name: unet")
    # MONAI's middle block attends at the deepest level whatever attention_levels[-1] says.
    check_level_widths([base_channels * mult for mult in channel_mult], attention_levels[:-1] + [True], norm_groups,
                       num_head_channels, " (monai_unet's middle block attends at the deepest level)")


@BACKBONES.register("monai_unet")
class MonaiUNet(nn.Module):
    """MONAI's diffusion U-Net behind cdm4mi's interface: ``forward(x [B, C, *spatial], t [B], cond)``.

    Options as ``unet`` (``cdm4mi.models.unet.ConditionalUNet``; the module docstring lists what differs),
    plus ``use_flash_attention``: MONAI's attention through ``torch.nn.functional.scaled_dot_product_attention``
    (as ``unet`` always does; False materialises every [tokens x tokens] attention matrix).
    ``self.unet`` is the wrapped ``DiffusionModelUNet``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1, base_channels: int = 64,
                 channel_mult: list[int] = [1, 2, 4], num_res_blocks: int = 2,  # noqa: B006 - copied, never mutated
                 attention_levels: list[bool] = [False, False, True], num_head_channels: int = 32,  # noqa: B006
                 dropout: float = 0.0, norm_groups: int = 32,
                 conditioning_key: ConditioningKey = "concat",
                 cond_channels: int | None = None, vector_dim: int = 0, num_classes: int = 0,
                 cond_drop_prob: float = 0.0, cond_patch_size: int = 8, token_dim: int = 128,
                 max_cond_tokens: int = 256, attention_window: int | None = None,
                 gradient_checkpointing: bool = False, use_flash_attention: bool = True):
        # Imported here, not at the top: `import monai` takes seconds and every build_backbone imports this module.
        from monai.networks.nets import DiffusionModelUNet

        super().__init__()
        channel_mult, attention_levels = list(channel_mult), list(attention_levels)
        _validate_options(spatial_dims, base_channels, channel_mult, attention_levels, num_head_channels, dropout,
                          norm_groups, conditioning_key, attention_window, gradient_checkpointing)
        self.spatial_dims, self.in_channels, self.conditioning_key = spatial_dims, in_channels, conditioning_key
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.cond_drop_prob = cond_drop_prob
        time_embed_dim = 4 * base_channels  # MONAI's width of the time embedding (channels[0] * 4), as unet's
        if cond_channels is None:
            cond_channels = default_cond_channels(conditioning_key, in_channels, out_channels)
        self.condition = ConditionEncoder(spatial_dims, conditioning_key, cond_channels, vector_dim, num_classes,
                                          time_embed_dim, token_dim, cond_patch_size, max_cond_tokens,
                                          cond_drop_prob)
        uses_tokens = self.condition.uses_tokens
        self.adds_embedding = not uses_tokens and bool(vector_dim or num_classes)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            num_res_blocks=num_res_blocks, channels=[base_channels * mult for mult in channel_mult],
            attention_levels=attention_levels, norm_num_groups=norm_groups, num_head_channels=num_head_channels,
            with_conditioning=uses_tokens, cross_attention_dim=token_dim if uses_tokens else None,
            num_class_embeds=1 if self.adds_embedding else None, dropout_cattn=dropout,
            use_flash_attention=use_flash_attention)
        if self.adds_embedding:
            # MONAI adds class_embedding(class_labels) to the time embedding; with the identity there, the
            # condition embedding (vector / label, or the learned null) passed as class_labels is added as is.
            self.unet.class_embedding = nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        """Predict from noisy ``x`` at timesteps ``t`` (integer or fractional; a scalar is shared by the batch)."""
        check_spatial_shape(x, self.spatial_dims, self.size_multiple, "2 ** (len(channel_mult) - 1)")
        condition = self.condition(cond, x)
        inputs = stack_condition(x, condition.image, self.in_channels)
        return self.unet(inputs, batch_timesteps(t, x), context=condition.tokens,
                         class_labels=condition.embedding if self.adds_embedding else None)
