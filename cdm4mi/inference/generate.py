"""Drawing many samples from a generative model in batches: the one loop ``cdm4mi sample`` and ``cdm4mi evaluate``
(generative) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from cdm4mi.diffusion.sampling import StepCallback
from cdm4mi.inference.runtime import autocast
from cdm4mi.training.module import DiffusionModule


@torch.no_grad()
def sample_batches(module: DiffusionModule, shape: tuple[int, ...], count: int, labels: torch.Tensor | None = None,
                   batch_size: int = 500, seed: int = 0, precision: str = "fp32",
                   description: str = "sampling", on_first_prior: Callable[[torch.Tensor], None] | None = None,
                   callback: StepCallback | None = None, step_progress: bool = False,
                   **overrides: Any) -> torch.Tensor:
    """``count`` samples of ``shape`` from the model's prior, on the CPU; ``labels`` (when given) condition them
    in order. One generator seeded with ``seed`` on the module's device draws everything, so a seed repeats a run;
    the network runs there under ``precision`` autocast (``cdm4mi.inference.runtime``).
    ``on_first_prior`` sees the first batch's prior draw and ``callback`` the first batch's steps (figures of the
    process); ``overrides`` replace ``sampling`` options."""
    device = module.device
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = []
    for start in tqdm(range(0, count, batch_size), desc=description, unit="batch"):
        size = min(batch_size, count - start)
        x_T = module.prior((size, *shape), generator)
        cond = None if labels is None else {"label": labels[start:start + size].to(device)}
        if start == 0 and on_first_prior is not None:
            on_first_prior(x_T)
        with autocast(device, precision):
            batches.append(module.sample(x_T, cond, generator=generator, callback=callback if start == 0 else None,
                                         progress=step_progress, **overrides).float().cpu())
    return torch.cat(batches)
