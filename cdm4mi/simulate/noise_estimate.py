"""How noisy a scan is, measured on the scan itself (no reference image needed).

Two estimators, for two jobs:

``estimate_noise_std``
    Wavelet MAD on the finest scale (Donoho & Johnstone 1994): right for *white* noise, in any units.
    CT noise after filtered back projection is not white: the reconstruction kernel (ramp times a
    window) leaves little power at the highest frequencies, so this reads far too low on CT (about a
    quarter of the true std on the simulator's Hann-filtered noise, ``tests/data/test_noise_estimate.py``).
    It stays as it is because it defines the ``noise_level`` metadata a model was trained on and the
    warm start of ``cdm4mi.inference.denoise``: changing it would change what those numbers mean.
``estimate_ct_noise_hu``
    The HU std of the noise in soft tissue of a CT slice or volume, right for FBP-correlated noise:
    the std within the flattest soft-tissue windows, which sees the noise at every frequency.
    Use it to compare noise levels in HU, e.g. to calibrate a simulated dose to the scan's own noise
    (``cdm4mi.simulate.ct_dose.simulate_relative_dose``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage, stats
from skimage.restoration import estimate_sigma

SOFT_TISSUE_HU = (-100.0, 200.0)  # fat edge to enhanced organs; lung, bone and air are out
WINDOW_PX = 14
_WINDOW_STEP_PX = WINDOW_PX // 2
_MEDIAN_PX = 5  # the tissue class is read from a 5x5 median, so noise barely moves pixels across the range
_BODY_HU = -500.0
_PERCENTILE = 25.0
# Gaussian noise in a plane-detrended window has a variance distributed as sigma^2 chi2_nu / nu, with
# nu = (m-3)^2 / sum of squared noise correlations over the window (Satterthwaite). FBP noise from a
# standard kernel sampled at about its resolution (lag-1 correlation ~0.6) gives nu ~ 60 in 14x14 windows;
# white noise gives 192. The 25th percentile of the window std is then sqrt(chi2.ppf(0.25, nu) / nu)
# sigma: 0.934 at nu = 60 (0.917 at 40, 0.949 at 100), so the factor is off by <= 2 % over that range.
# Checked on pure noise: simulated FBP noise 0.92-0.93 (the few % being its slow change across the
# field), white noise 0.966 (predicted 0.964).
_EFFECTIVE_DOF = 60
_PURE_NOISE_PERCENTILE_RATIO = math.sqrt(stats.chi2.ppf(_PERCENTILE / 100, _EFFECTIVE_DOF) / _EFFECTIVE_DOF)
_MIN_WINDOWS = 8
_MAX_SLICES = 16
NOISE_ESTIMATORS = ("wavelet", "ct_flat_regions")  # data.noise_estimator: estimate_noise_std, estimate_ct_noise_hu


def estimate_noise_std(volume: np.ndarray) -> float:
    """Noise std of a [D, H, W] volume, in the volume's units (model units for a normalized volume): the
    median over slices of a wavelet MAD estimate (Donoho & Johnstone 1994, ``skimage.restoration.estimate_sigma``).

    Assumes white noise: on CT it reads low (see the module docstring; ``estimate_ct_noise_hu`` is the
    HU measure). Used for the warm start of ``cdm4mi.inference.denoise`` and for the ``noise_level``
    metadata field (``cdm4mi.data.metadata``), so both see the same number for the same volume.
    """
    step = max(1, volume.shape[0] // 16)  # a subsample of slices is plenty for a median
    return float(np.median([estimate_sigma(slice_) for slice_ in volume[::step]]))


def estimate_ct_noise_hu(slice_or_volume_hu: np.ndarray) -> float:
    """HU std of the noise in soft tissue of a CT slice [H, W] or volume [D, H, W] (HU).

    Every 14x14-pixel window (half-overlapping) lying wholly in soft tissue (``soft_tissue_mask``) is
    detrended by a least-squares plane, so slow anatomy gradients do not count; its residual std is
    noise plus whatever structure the window holds. The 25th percentile over windows picks the flattest
    ones and is divided by its value for pure Gaussian noise (0.934, see ``_EFFECTIVE_DOF``) to give the
    noise std. Windows are in pixels: FBP noise grain scales with the pixel, as the kernel is matched to
    the matrix. A volume gives the median over up to 16 evenly spaced slices.

    Returns NaN when no slice has 8 such windows (no soft tissue, or an image under ~30x30 pixels).
    Texture that no 14-pixel window escapes counts as noise, so on real anatomy this is an upper bound.
    """
    image = np.asarray(slice_or_volume_hu, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"slice_or_volume_hu: expected [H, W] or [D, H, W] HU, got shape {image.shape}")
    slices = image.reshape(-1, *image.shape[-2:])
    slices = slices[:: max(1, math.ceil(len(slices) / _MAX_SLICES))]
    estimates = [value for value in map(_slice_noise_hu, slices) if math.isfinite(value)]
    return float(np.median(estimates)) if estimates else math.nan


def estimate_input_noise(volume_units: np.ndarray, normalization, estimator: str = "wavelet") -> float:
    """Noise std of a [D, H, W] volume in model units, by one of ``NOISE_ESTIMATORS`` (``data.noise_estimator``).

    ``normalization`` is the fitted normalization that made ``volume_units``. ``wavelet``:
    ``estimate_noise_std`` on the units. ``ct_flat_regions``: ``estimate_ct_noise_hu`` on the HU
    (``normalization.inverse``) times ``units_per_hu``; a volume without soft tissue to measure in gets
    the wavelet estimate.
    """
    if estimator not in NOISE_ESTIMATORS:
        raise ValueError(f"noise_estimator: unknown '{estimator}'; choose one of {list(NOISE_ESTIMATORS)}")
    if estimator == "ct_flat_regions":
        sigma_hu = estimate_ct_noise_hu(np.asarray(normalization.inverse(volume_units)))
        if math.isfinite(sigma_hu):
            return sigma_hu * units_per_hu(normalization)
    return estimate_noise_std(volume_units)


def units_per_hu(normalization) -> float:
    """Model units per HU (scan unit) of a fitted linear normalization (``cdm4mi.data.normalize``)."""
    return 1.0 / abs(float(normalization.inverse(np.float32(1.0)) - normalization.inverse(np.float32(0.0))))


def soft_tissue_mask(slice_or_volume_hu: np.ndarray) -> np.ndarray:
    """Boolean mask of the soft tissue of a CT slice [H, W] or volume [D, H, W] (per slice): pixels whose
    5x5 median lies in ``SOFT_TISSUE_HU`` inside the body (the largest region above -500 HU, holes filled,
    so a table or blanket outside it does not count)."""
    image = np.asarray(slice_or_volume_hu, dtype=np.float32)
    return np.stack([_slice_soft_tissue(s) for s in image.reshape(-1, *image.shape[-2:])]).reshape(image.shape)


def soft_tissue_noise_hu(noise_hu: np.ndarray, reference_hu: np.ndarray) -> float:
    """Std (HU) of a *known* noise image (e.g. low dose minus full dose) over the soft tissue of
    ``reference_hu`` (same shape): the quantity ``estimate_ct_noise_hu`` estimates without a reference.
    NaN where the reference has no soft tissue."""
    noise = np.asarray(noise_hu)
    if noise.shape != np.shape(reference_hu):
        raise ValueError(f"noise_hu, reference_hu: shapes differ, {noise.shape} vs {np.shape(reference_hu)}")
    values = noise[soft_tissue_mask(reference_hu)].astype(np.float64)
    return float(values.std()) if values.size else math.nan


def _slice_soft_tissue(hu: np.ndarray) -> np.ndarray:
    median = ndimage.median_filter(hu, size=_MEDIAN_PX, mode="nearest")
    labels, count = ndimage.label(ndimage.binary_fill_holes(median > _BODY_HU))
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    body = labels == 1 + np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, range(1, count + 1)))
    return body & (median >= SOFT_TISSUE_HU[0]) & (median <= SOFT_TISSUE_HU[1])


def _slice_noise_hu(hu: np.ndarray) -> float:
    if min(hu.shape) < WINDOW_PX:
        return math.nan
    step = _WINDOW_STEP_PX
    inside = sliding_window_view(_slice_soft_tissue(hu), (WINDOW_PX, WINDOW_PX))[::step, ::step].all(axis=(-1, -2))
    if inside.sum() < _MIN_WINDOWS:
        return math.nan
    windows = sliding_window_view(hu, (WINDOW_PX, WINDOW_PX))[::step, ::step][inside]
    windows = windows.reshape(len(windows), -1).astype(np.float64)
    plane, _ = np.linalg.qr(_plane_basis())
    residual = windows - (windows @ plane) @ plane.T
    stds = np.sqrt((residual**2).sum(axis=1) / (WINDOW_PX**2 - 3))
    return float(np.percentile(stds, _PERCENTILE) / _PURE_NOISE_PERCENTILE_RATIO)


def _plane_basis() -> np.ndarray:
    """[pixels, 3]: constant, row and column ramps over one window (the plane a window is detrended by)."""
    rows, cols = np.mgrid[:WINDOW_PX, :WINDOW_PX] - (WINDOW_PX - 1) / 2
    return np.stack([np.ones(WINDOW_PX**2), rows.ravel(), cols.ravel()], axis=1)
