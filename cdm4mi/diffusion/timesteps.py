"""Which training timesteps a sampler visits, and in which order.

Spacings follow Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"),
with ``T`` training timesteps and ``n`` sampling steps:

* ``leading``:  ``0, T//n, 2*(T//n), ...`` reversed (DDIM paper, diffusers' default)
* ``trailing``: ``round(T - k*T/n) - 1`` for ``k = 0 .. n-1`` (always starts at ``T - 1``)
* ``linspace``: ``round(linspace(0, T - 1, n))`` reversed

A sampler always steps from one listed timestep to the *next one in the list* and from the last one
to ``-1`` (clean data). MONAI 1.6.1's DDIM and diffusers' DDIM use ``t - T//n`` instead, which lands
off the list for ``linspace`` (and for ``trailing`` when ``n`` does not divide ``T``).

With a warm start at ``t_start`` the same spacing is laid over ``0 .. t_start``, and every spacing
begins exactly at ``t_start`` (``leading``, and a single ``linspace`` step, are shifted up to it).
"""

from __future__ import annotations

import numpy as np
import torch

SPACINGS = ("leading", "trailing", "linspace")


def sampling_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", t_start: int | None = None
) -> torch.Tensor:
    """Strictly decreasing int64 timesteps to visit, ``num_steps`` of them."""
    if spacing not in SPACINGS:
        raise ValueError(f"sampling.timestep_spacing: unknown '{spacing}'; choose one of {list(SPACINGS)}")
    if t_start is not None and not 0 <= t_start < num_train_timesteps:
        raise ValueError(f"sampling.t_start: must lie in [0, {num_train_timesteps - 1}], got {t_start}")
    span = num_train_timesteps if t_start is None else t_start + 1
    if not 1 <= num_steps <= span:
        raise ValueError(f"sampling.steps: must lie in [1, {span}] for this schedule and start, got {num_steps}")
    if spacing == "leading":
        steps = np.arange(num_steps) * (span // num_steps)
    elif spacing == "trailing":
        steps = np.round(span - np.arange(num_steps) * (span / num_steps)) - 1
        steps = steps[::-1]
    else:
        steps = np.linspace(0, span - 1, num_steps).round()
    if t_start is not None:
        steps = steps + (t_start - steps[-1])
    return torch.from_numpy(np.ascontiguousarray(steps[::-1]).astype(np.int64))


def previous_timesteps(timesteps: torch.Tensor) -> torch.Tensor:
    """For each listed timestep, the one a sampler steps to: the next in the list, then -1."""
    return torch.cat([timesteps[1:], torch.tensor([-1], dtype=timesteps.dtype)])
