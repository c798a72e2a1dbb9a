"""Self-supervised adaptation of a CT denoiser to the scan it is about to denoise (``sampling.adapt_steps``).

A model trained on other scanners does not know this scan's anatomy, pixel size or reconstruction; a classical
filter adapts to every image, a trained network does not. Recorrupted-to-recorrupted training (R2R, Pang et al.,
CVPR 2021) fine-tunes it on the scan itself, without a clean target: with the input ``y = x + n`` and a fresh
noise ``z`` of ``n``'s covariance, ``y1 = y + a z`` and ``y2 = y - z / a`` carry uncorrelated noises
(``Cov = S - S = 0``), so a network regressing ``y2`` from ``y1`` under L2 learns ``E[x | y1]``, the clean scan.
``z`` comes from the projection-domain simulator (``cdm4mi.simulate.relative_dose``) at the input's estimated noise
and in its texture (the kernel cutoff fitted to the input noise's neighbour correlations), so its covariance is
close to ``n``'s as the method needs, and is rescaled to that noise exactly. The fine-tuning runs the training
objective on random crops of ``(y1, y2)``, every item warm-started from ``y1`` as ``denoise`` starts a scan, with
the noise level of ``y1`` on the metadata vector; the scan is then denoised by the adapted copy as usual.

How much noise to remove: a low-dose scan's noise is the full-dose scan's own noise plus what the dose reduction
added, and the model was trained to return the full-dose scan. When the dose fraction ``d`` is known (``--metadata
dose_fraction=0.25``), ``z`` has the added noise's std only, ``sigma sqrt(1 - d)``: ``y1`` and ``y2`` then share the
full-dose noise, and the copy learns ``E[full dose | y1]``, as the model's training did (never stripping more than
was added). Unknown, ``z`` has the whole noise std ``sigma``: the copy learns the noise-free scan. Measured on real
CT at 50 % dose, where the two differ most (neck slice): unadapted 46.8 dB, whole noise 46.1, added noise 49.2.

One scan is one realization of its noise ``n``, which every pair shares: trained long enough, the network learns
that realization back (measured on a 128 x 128 slice: the truth's PSNR rose for 100 steps, then fell below the
unadapted model's). So the steps are capped at ``MAX_PASSES`` passes over the scan's body pixels, and a scan with
under ``MIN_BODY_PIXELS`` of body (less than one 64 x 64 crop) is denoised unadapted. While ``z`` had the
simulator's plain texture instead of the scan's, adapting the 128 x 128 spine slice (12.9 k body pixels) made it
worse at every setting tried, and scans under 32 768 body pixels were left alone; with ``z`` in the input's own
texture the same slice gains (benchmark model at 25 / 10 / 50 % dose: 33.69 / 27.97 / 38.29 dB unadapted,
34.68 / 31.75 / 38.23 adapted, 49 steps), so only the crop's worth of body is required now.
On real CT (``benchmarks/bench_quality.py``, six held-out patients, added noise in the simulator's plain Hann
texture) it moved the mean PSNR from 45.10 to 46.22 dB at 25 % dose (NLM 46.30) and from 48.36 to 49.32 at 50 %
(NLM 48.94); with the added noise in each scan's own texture, from 43.64 to 45.03 at 25 % (NLM 45.25), 39.31 to
41.75 at 10 % (NLM 41.65) and 47.62 to 48.53 at 50 % (NLM 48.18); see the README's "Quality on real scans".
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cdm4mi.data.metadata import encode_metadata
from cdm4mi.data.preprocessing import slab_indices
from cdm4mi.diffusion.objective import DiffusionObjective
from cdm4mi.inference.denoise import dihedral_turn
from cdm4mi.simulate.noise_estimate import units_per_hu
from cdm4mi.simulate.relative_dose import scan_kernel_cutoff, texture_noise
from cdm4mi.training.module import DiffusionModule

ALPHA = 0.5  # R2R's recorruption strength: y1 has 1.12 times the input's noise std, y2 2.24 times
BODY_HU = -500.0  # a pixel above this is body (crops are centred on body pixels)
MIN_BODY_PIXELS = 4_096  # under this (one 64 x 64 crop), the scan is too small to adapt to without learning its noise
MAX_PASSES = 250  # at most this many times each body pixel, summed over the crops
MAX_SLICES = 4  # recorrupted slices of a volume (evenly spaced): the simulator's cost stays fixed
NOISE_DRAWS = 8  # recorruption noises per slice


@dataclass(frozen=True)
class Adaptation:
    """What ``adapt_to_scan`` did: ``steps`` run (0: skipped, ``reason`` says why), in ``seconds``."""

    steps: int
    seconds: float = 0.0
    reason: str = ""

    def describe(self) -> str:
        if not self.steps:
            return f"not adapted to the scan: {self.reason}"
        return f"adapted to the scan: {self.steps} self-supervised steps in {self.seconds:.0f} s"


def check_adaptable(module: DiffusionModule) -> None:
    """Raise ValueError (naming ``sampling.adapt_steps``) for a model this adaptation cannot serve."""
    preprocessing = module.preprocessing
    if preprocessing.task != "denoise" or preprocessing.normalizer().name != "hu_window":
        raise ValueError("sampling.adapt_steps: adapts CT denoisers (HU normalization) only; set it to 0")
    if preprocessing.mode == "3d":
        raise ValueError("sampling.adapt_steps: adapts 2D and 2.5D models only; this one is 3D: set it to 0")
    if type(module.objective) is not DiffusionObjective:
        raise ValueError("sampling.adapt_steps: needs the discrete diffusion objective (no diffusion.sde); set it to 0")


def adapt_to_scan(module: DiffusionModule, volume_hu: np.ndarray, spacing_mm: tuple[float, float], normalization,
                  sigma: float, values: dict[str, Any], steps: int, learning_rate: float, seed: int = 0,
                  progress: bool = False, dose_fraction: float | None = None) -> tuple[DiffusionModule, Adaptation]:
    """A copy of ``module`` fine-tuned on ``volume_hu`` [D, H, W] (HU) by R2R (module docstring), or ``module``
    itself when there is too little body to adapt to. ``normalization`` is the one fitted on the volume,
    ``sigma`` its noise std in model units, ``values`` its metadata values, ``dose_fraction`` its dose relative
    to full dose when known (the removal budget, module docstring). The caller's module is never changed."""
    check_adaptable(module)
    start = time.perf_counter()
    if dose_fraction is not None and not 0 < dose_fraction <= 1:
        raise ValueError(f"dose_fraction: expected a fraction of the full dose in (0, 1], got {dose_fraction}")
    if dose_fraction == 1:
        return module, Adaptation(0, time.perf_counter() - start, "a full-dose scan (dose_fraction 1): no added noise")
    removed = sigma if dose_fraction is None else sigma * math.sqrt(1 - dose_fraction)
    context = module.preprocessing.context
    body = volume_hu > BODY_HU
    counts = body.reshape(len(body), -1).sum(axis=1)
    candidates = np.flatnonzero(counts)
    centres = candidates[np.linspace(0, len(candidates) - 1, min(MAX_SLICES, len(candidates))).round().astype(int)] \
        if len(candidates) else candidates
    body_pixels = int(counts[centres].sum()) if len(centres) else 0
    patch = crop_size(module, volume_hu.shape[-2:])
    batch = min(int(module.config.training.batch_size), 16)
    if patch is None:
        return module, Adaptation(0, time.perf_counter() - start, "its slices are smaller than one training crop")
    if body_pixels < MIN_BODY_PIXELS:
        return module, Adaptation(0, time.perf_counter() - start, f"{body_pixels} body pixels, under "
                                  f"{MIN_BODY_PIXELS}: too few to learn from without learning their noise")
    steps = min(steps, max(1, math.floor(MAX_PASSES * body_pixels / (batch * patch * patch))))
    y1, y2, centre_rows = recorrupted_pairs(volume_hu, centres, context, spacing_mm, normalization, removed, seed)
    sigma1 = math.hypot(sigma, ALPHA * removed)
    fields = module.preprocessing.metadata
    vector = torch.from_numpy(encode_metadata(fields, values | {"noise_level": sigma1})) if fields else None

    adapted = copy.deepcopy(module)
    network, device = adapted.backbone, adapted.device
    objective = dataclasses.replace(adapted.objective, loss_type="l2", warm_start_share=1.0)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    clip = module.config.training.gradient_clip_val
    generator = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    positions = [np.argwhere(body[c]) for c in centres]
    turns = bool(module.config.data.get("augment", False))
    with torch.inference_mode(False), torch.enable_grad():
        network.train()
        for _ in tqdm(range(steps), desc="adapting to the scan", unit="step", disable=not progress, leave=False):
            x0, cond = random_crops(y1, y2, centre_rows, positions, patch, batch, turns, rng)
            cond = cond.to(device)
            condition = cond if vector is None else {"image": cond, "vector": vector.to(device).expand(batch, -1)}
            noise_std = torch.full((batch,), sigma1, device=device)
            loss = objective.loss(network, x0.to(device), condition, generator=generator, input_noise_std=noise_std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
            optimizer.step()
        network.eval()
    network.requires_grad_(False)
    return adapted, Adaptation(steps, time.perf_counter() - start)


def crop_size(module: DiffusionModule, shape: tuple[int, int]) -> int | None:
    """The square crop: the training patch's side, cut to the slice and to the network's size multiple."""
    multiple = module.backbone.size_multiple
    side = min(min(module.preprocessing.patch_size or (64, 64)), *shape)
    side -= side % multiple
    return side if side >= multiple else None


def recorrupted_pairs(volume_hu: np.ndarray, centres: np.ndarray, context: int, spacing_mm, normalization,
                      sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``y1 = y + a z`` and ``y2 = y - z / a`` in model units, ``z`` of std ``sigma`` (model units) and the input's
    texture, [NOISE_DRAWS, S, H, W] over the S slices the centres' slabs need, and the slab rows (indices into S) of each
    centre [C, 2k+1]."""
    slabs = slab_indices(len(volume_hu), context, centres)
    needed, rows = np.unique(slabs, return_inverse=True)
    image = volume_hu[needed].astype(np.float32)
    sigma_hu = sigma / units_per_hu(normalization)
    cutoff, _ = scan_kernel_cutoff(image)  # fitted once: every draw has the input's texture
    y1, y2 = [], []
    for k in range(NOISE_DRAWS):
        z = texture_noise(image, spacing_mm, sigma_hu, seed=seed + 7919 * k, kernel_cutoff=cutoff)
        y1.append(np.asarray(normalization.forward(image + ALPHA * z), dtype=np.float32))
        y2.append(np.asarray(normalization.forward(image - z / ALPHA), dtype=np.float32))
    return torch.from_numpy(np.stack(y1)), torch.from_numpy(np.stack(y2)), rows.reshape(slabs.shape)


def random_crops(y1: torch.Tensor, y2: torch.Tensor, centre_rows: np.ndarray, positions: list[np.ndarray],
                 patch: int, batch: int, turns: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` crops centred on body pixels: targets from ``y2`` (the centre slice) [B, 1, P, P] and conditions
    from ``y1`` (the slab) [B, 2k+1, P, P], one noise draw each, turned together when the model trained so."""
    height, width = y1.shape[-2:]
    context = centre_rows.shape[1] // 2
    targets, conditions = [], []
    for _ in range(batch):
        draw, centre = int(rng.integers(len(y1))), int(rng.integers(len(centre_rows)))
        row, col = positions[centre][rng.integers(len(positions[centre]))]
        top = int(np.clip(row - patch // 2, 0, height - patch))
        left = int(np.clip(col - patch // 2, 0, width - patch))
        window = (slice(top, top + patch), slice(left, left + patch))
        turn = int(rng.integers(8)) if turns else 0
        rows = torch.from_numpy(centre_rows[centre])
        conditions.append(dihedral_turn(y1[draw][rows][(slice(None), *window)], turn))
        targets.append(dihedral_turn(y2[draw][rows[context : context + 1]][(slice(None), *window)], turn))
    return torch.stack(targets), torch.stack(conditions)
