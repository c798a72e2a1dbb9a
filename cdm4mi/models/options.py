"""Option types and checks the backbones' constructors share: each rule is written once, here.
``Registry.build`` validates config values against the constructors' annotations (pydantic) before anything is
built; the checks below also guard a backbone constructed directly."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, get_args

import pydantic

# How an image backbone takes its condition (cdm4mi.models.conditioning); None: unconditional.
ConditioningKey = Optional[Literal["concat", "crossattn", "hybrid", "adaln"]]
CONDITIONING_KEYS = (None, *get_args(get_args(ConditioningKey)[0]))

# Pixels (voxels) per side folded into channels before the first level and unfolded after the last (1: none).
PixelUnshuffle = Annotated[int, pydantic.Field(ge=1, le=8)]


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"network.dropout: must lie in [0, 1), got {dropout}")
