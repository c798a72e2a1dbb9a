"""EMA of the weights with warm-up, on Lightning's ``WeightAveraging`` callback.

Lightning swaps the averaged weights in for validation (so validation losses and sample previews
use them), writes them as the checkpoint's ``state_dict`` (the live weights go to
``current_model_state`` for resuming), and copies them into the model when training ends.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


def warmup_ema_avg_fn(decay: float):
    """Averaging function with the usual warm-up: ``decay_n = min(decay, (1 + n) / (10 + n))``,
    so the average follows the weights closely for the first hundreds of updates instead of
    staying near the random initialisation."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        effective = min(decay, (1 + n) / (10 + n))
        return averaged + (current - averaged) * (1 - effective)

    return average


class WarmupEMA(WeightAveraging):
    """EMA updated after every optimizer step."""

    def __init__(self, decay: float = 0.999):
        super().__init__(avg_fn=warmup_ema_avg_fn(decay))
        self.decay = decay
