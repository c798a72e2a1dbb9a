"""Validation the way a denoiser is judged: at every validation, the validation slices are denoised as ``cdm4mi
denoise`` would (warm start at their estimated noise, the config's sampler and steps, a fixed seed), and PSNR and
SSIM against the full dose are logged beside those of the low-dose input, with a preview image in TensorBoard.
``val/psnr`` picks ``best.ckpt`` (``cdm4mi.training.run``).

CT (the ``hu_window`` normalization): in HU, clipped to ``WINDOW`` [-1000, 1000] with data range 2000, as
``cdm4mi evaluate`` scores by default. Other normalizations: in model units, data range the target's span.
Metrics are MONAI's (``PSNRMetric``, ``SSIMMetric``, 2D or 3D as the data); items are scored whole (padded to the
network's multiple for sampling, cropped back).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from monai.metrics import PSNRMetric, SSIMMetric

from cdm4mi.data.normalize import HUWindow
from cdm4mi.simulate.noise_estimate import estimate_input_noise
from cdm4mi.training.module import DiffusionModule, pad_images
from cdm4mi.training.warm_start import WarmStartSampler, warm_start_timestep

WINDOW = (-1000.0, 1000.0)  # HU: cdm4mi evaluate's default window
MONITOR = "val/psnr"


class DenoisingValidation(Callback):
    """Logs ``val/psnr``, ``val/ssim`` (the model) and ``val/psnr_input``, ``val/ssim_input`` (the low-dose input)
    for a denoiser (``module.task == "denoise"``) at every validation; ``seed`` fixes the sampling noise."""

    def __init__(self, seed: int = 0, preview_slices: int = 4):
        self.seed, self.preview_slices = seed, preview_slices

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: DiffusionModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or pl_module.task != "denoise":
            return
        crop = (..., *(slice(0, size) for size in batch["x0"].shape[2:]))  # padded for sampling, scored unpadded
        padded = pad_images(batch, pl_module.backbone.size_multiple)
        denoised = denoise_batch(pl_module, padded["cond"], self.seed + batch_idx)[crop]
        image = condition_image(batch["cond"])
        low_dose = image[:, image.shape[1] // 2 :][:, :1]
        target = batch["x0"]
        scale = Scale(pl_module, target)
        size = target.shape[0]
        for name, estimate in (("", denoised), ("_input", low_dose)):
            psnr, ssim = scale.scores(estimate, target)
            pl_module.log(f"val/psnr{name}", psnr, batch_size=size, sync_dist=True, prog_bar=not name)
            pl_module.log(f"val/ssim{name}", ssim, batch_size=size, sync_dist=True)
        if batch_idx == 0 and trainer.is_global_zero:
            log_preview(trainer, scale, low_dose, denoised, target, self.preview_slices)


@torch.no_grad()
def denoise_batch(module: DiffusionModule, cond: object, seed: int) -> torch.Tensor:
    """A validation batch's condition (an image stack, or ``{"image", "vector"}``) denoised as ``cdm4mi denoise``
    denoises a scan: warm start at the noise estimated on its centre slices (the model's
    ``data.noise_estimator``), the config's sampler and steps, one draw seeded with ``seed``."""
    image = condition_image(cond)
    centre = image[:, image.shape[1] // 2].float().cpu()
    slices = centre.reshape(-1, *centre.shape[-2:]).numpy()  # [B(, D), H, W] -> slices
    sigma = estimate_input_noise(slices, module.preprocessing.normalizer(), module.preprocessing.noise_estimator)
    generator = torch.Generator(device=module.device).manual_seed(seed)
    return WarmStartSampler(module, None, None, warm_start_timestep(module, sigma), sigma, generator)(cond)


def condition_image(cond: object) -> torch.Tensor:
    """The conditioning image stack of a denoiser's batch (``cond`` itself, or its ``"image"``)."""
    return cond["image"] if isinstance(cond, dict) else cond


class Scale:
    """The units metrics are computed in: HU in ``WINDOW`` for CT, model units otherwise."""

    def __init__(self, module: DiffusionModule, target: torch.Tensor):
        normalization = module.preprocessing.normalizer()
        self.hu = normalization if isinstance(normalization, HUWindow) else None
        span = float(target.max() - target.min()) if self.hu is None else WINDOW[1] - WINDOW[0]
        self.data_range = max(span, 1e-6)
        self.psnr = PSNRMetric(max_val=self.data_range, reduction="mean")
        # a thin 3D patch: SSIM's 11-voxel window shrinks to fit along that axis (odd, as the window must be)
        window = [max(min(11, size - (1 - size % 2)), 1) for size in target.shape[2:]]
        self.ssim = SSIMMetric(spatial_dims=target.ndim - 2, data_range=self.data_range, win_size=window,
                               reduction="mean")

    def __call__(self, units: torch.Tensor) -> torch.Tensor:
        units = units.float()
        if self.hu is None:
            return units
        return self.hu.inverse(units).clamp(*WINDOW)

    def scores(self, estimate: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        estimate, target = self(estimate), self(target)
        return self.psnr(estimate, target).mean(), self.ssim(estimate, target).mean()


def log_preview(trainer: L.Trainer, scale: Scale, low_dose: torch.Tensor, denoised: torch.Tensor,
                target: torch.Tensor, count: int) -> None:
    """Low dose | model | full dose for the first ``count`` slices of the first validation batch, as one image in
    TensorBoard (display window: the metric window for CT, the target's range otherwise)."""
    logger = next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
    if logger is None or count == 0:
        return
    def plane(image: torch.Tensor, k: int) -> torch.Tensor:  # a 3D patch shows its middle slice
        picture = image[k, 0]
        return picture if picture.ndim == 2 else picture[picture.shape[0] // 2]

    rows = [torch.cat([scale(plane(image, k)) for image in (low_dose, denoised, target)], dim=-1)
            for k in range(min(count, target.shape[0]))]
    grid = torch.cat(rows, dim=-2)
    low, high = (WINDOW if scale.hu is not None else (float(grid.min()), float(grid.max())))
    picture = ((grid - low) / max(high - low, 1e-6)).clamp(0, 1).cpu().numpy().astype(np.float32)
    logger.experiment.add_image("val/low_dose|model|full_dose", picture[None], trainer.global_step)
