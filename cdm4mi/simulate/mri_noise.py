"""Rician noise of magnitude MR images (Gudbjartsson & Patz 1995, MRM 34:910).

A magnitude image of complex data with Gaussian noise of std ``sigma`` in both channels is
``m = sqrt((s + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma^2)``. Where there is no signal ``m`` is Rayleigh
(mean ``sigma * sqrt(pi/2)``); at high SNR it is close to ``s + n1``.

``sigma`` is quoted as a percentage of a reference intensity, as BrainWeb does (of white matter on
T1, of CSF on T2/PD). Without a given reference this module uses the 99th percentile of the image,
which sits in the brightest tissue of a head or body scan while ignoring a few hot voxels; pass the
mean of the reference tissue as ``reference`` to follow BrainWeb exactly.

MONAI's ``RandRicianNoise`` is not used: with ``relative=True`` it scales sigma by the *image's*
standard deviation (dominated by background-to-tissue contrast, not a tissue intensity), by default
it draws sigma uniformly from [0, std] instead of using it, and with ``channel_wise=True`` it writes
the noisy result into the caller's numpy array (checked on MONAI 1.6.1).
"""

from __future__ import annotations

import math

import numpy as np

REFERENCE_PERCENTILE = 99.0


def add_rician_noise(
    image: np.ndarray,
    sigma_percent: float,
    reference: float | None = None,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Magnitude image with Rician noise of std ``sigma_percent``% of ``reference`` (image units).

    ``reference`` defaults to the image's 99th percentile. Returns float32 of the input's shape;
    the input is not modified. Pass ``seed`` or a numpy ``rng`` for reproducible noise.
    """
    signal = np.asarray(image, dtype=np.float32)
    if signal.size == 0 or not np.all(np.isfinite(signal)):
        raise ValueError("image: must be a non-empty array of finite intensities")
    if not (math.isfinite(sigma_percent) and sigma_percent >= 0):
        raise ValueError(f"sigma_percent: noise std in % of the reference, must be >= 0, got {sigma_percent}")
    if reference is None:
        reference = float(np.percentile(signal, REFERENCE_PERCENTILE))
        if reference <= 0:
            raise ValueError("reference: the image's 99th percentile is not positive; pass a reference intensity")
    elif not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"reference: intensity the noise percentage refers to, must be > 0, got {reference}")
    if seed is not None and rng is not None:
        raise ValueError("seed, rng: pass at most one of them")
    rng = rng if rng is not None else np.random.default_rng(seed)
    sigma = np.float32(sigma_percent / 100 * reference)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imaginary)
