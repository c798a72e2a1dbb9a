"""How noisy a scan is, measured on the scan itself (no reference image needed)."""

from __future__ import annotations

import numpy as np
from skimage.restoration import estimate_sigma


def estimate_noise_std(volume: np.ndarray) -> float:
    """Noise std of a [D, H, W] volume, in the volume's units (model units for a normalized volume): the
    median over slices of a wavelet MAD estimate (Donoho & Johnstone 1994, ``skimage.restoration.estimate_sigma``).

    Used for the warm start of ``cdm4mi.inference.denoise`` and for the ``noise_level`` metadata field
    (``cdm4mi.data.metadata``), so both see the same number for the same volume.
    """
    step = max(1, volume.shape[0] // 16)  # a subsample of slices is plenty for a median
    return float(np.median([estimate_sigma(slice_) for slice_ in volume[::step]]))
