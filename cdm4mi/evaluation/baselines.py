"""Classical denoising baselines that LDCT papers compare against, applied slice by slice in HU.

All take a slice [H, W] or volume [D, H, W] in HU and return float64 HU of the same shape. Slices
are filtered independently (no smoothing across the slice axis, whose spacing often differs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cdm4mi.inference.classical import nlm_filter


def _as_slices(volume_hu: np.ndarray, name: str) -> np.ndarray:
    volume = np.asarray(volume_hu, dtype=np.float64)
    if volume.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a slice [H, W] or volume [D, H, W] in HU, got shape {volume.shape}")
    return volume


def low_dose_input(volume_hu: np.ndarray) -> np.ndarray:
    """The unprocessed low-dose input (a copy): the floor every denoiser must beat."""
    return _as_slices(volume_hu, "low_dose_input").copy()


def gaussian_filter_baseline(volume_hu: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """Gaussian filter of standard deviation ``sigma_px`` pixels in-plane only (scipy, reflect borders)."""
    if not sigma_px > 0:
        raise ValueError(f"sigma_px: must be > 0 pixels, got {sigma_px}")
    volume = _as_slices(volume_hu, "gaussian_filter_baseline")
    sigma = (sigma_px, sigma_px) if volume.ndim == 2 else (0.0, sigma_px, sigma_px)
    return ndimage.gaussian_filter(volume, sigma=sigma)


def nlm_baseline(volume_hu: np.ndarray, patch_size: int = 5, patch_distance: int = 6,
                 h_factor: float = 0.8, sigma_hu: float | None = None) -> np.ndarray:
    """Non-local means per slice in HU: ``cdm4mi.inference.classical.nlm_filter`` (the filter ``cdm4mi denoise``
    blends in with ``sampling.nlm_blend``); without ``sigma_hu`` each slice's wavelet-MAD estimate, which reads
    CT's correlated noise low (pass ``estimate_ct_noise_hu`` of the scan for the filter tuned to the real noise)."""
    return nlm_filter(_as_slices(volume_hu, "nlm_baseline"), patch_size, patch_distance, h_factor, sigma_hu)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "low_dose_input": low_dose_input,
    "gaussian": gaussian_filter_baseline,
    "nlm": nlm_baseline,
}
