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
    (``cdm4mi.simulate.relative_dose.simulate_relative_dose``).
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
# nu = tr(S)^2 / tr(S^2) for the window's noise correlation matrix S (Satterthwaite): 193 for white noise,
# ~65 for FBP noise of the plain Hann kernel (lag-1 correlation ~0.6), ~20 for a smooth kernel (~0.8). The
# 25th percentile of the window std is then sqrt(chi2.ppf(0.25, nu) / nu) sigma (0.964, 0.936, 0.88), so
# each slice's nu is measured: S from the correlations of its flattest windows up to _DOF_LAG px apart
# (``_effective_dof``). Checked on pure simulated noise of a water phantom (tests/simulate/test_noise_estimate.py):
# 0.97-0.98 of the true std for Hann cutoffs 0.7-3, 0.93 at 0.5 and 0.88 at 0.4, where selecting the flattest
# windows also selects the least correlated ones (a constant nu of 60 read 0.88 and 0.82 there).
_DOF_LAG = 6
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
    ones and is divided by its value for pure Gaussian noise of the slice's texture (0.88-0.96, see
    ``_DOF_LAG``) to give the noise std. Windows are in pixels: FBP noise grain scales with the pixel, as the
    kernel is matched to the matrix. A volume gives the median over up to 16 evenly spaced slices.

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


def estimate_noise_correlation(slice_or_volume_hu: np.ndarray, max_lag: int = 3) -> np.ndarray:
    """Correlation of the noise of a CT slice [H, W] or volume [D, H, W] (HU) between pixels 1..``max_lag``
    apart (rows and columns averaged): its *texture*, which the reconstruction kernel sets.

    Measured as ``estimate_ct_noise_hu`` measures the level, in the flattest quarter of the detrended
    soft-tissue windows (``window_correlation``), pooled over up to 16 evenly spaced slices. Detrending
    lowers the correlations a little (a plane absorbs some slow noise), so compare them only with
    correlations measured the same way. NaN (``max_lag`` of them) when no slice has soft tissue to measure in.
    """
    image = np.asarray(slice_or_volume_hu, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"slice_or_volume_hu: expected [H, W] or [D, H, W] HU, got shape {image.shape}")
    slices = image.reshape(-1, *image.shape[-2:])
    residuals = [r for r in map(_window_residuals, slices[:: max(1, math.ceil(len(slices) / _MAX_SLICES))])
                 if r is not None]
    return window_correlation(np.concatenate(residuals), max_lag) if residuals else np.full(max_lag, math.nan)


def window_correlation(residuals: np.ndarray, max_lag: int = 3) -> np.ndarray:
    """Pooled correlation at lags 1..``max_lag`` px of detrended windows [N, 14, 14] (``plane_residuals``),
    rows and columns averaged, over the flattest quarter of them (the 25 % with the least residual energy,
    as ``estimate_ct_noise_hu`` picks its level): on anatomy the others hold structure, not noise."""
    if not 1 <= max_lag < WINDOW_PX:
        raise ValueError(f"max_lag: an integer in [1, {WINDOW_PX - 1}], got {max_lag}")
    flat = _flattest(residuals)
    return np.array([0.5 * (_lag_correlation(flat, 0, lag) + _lag_correlation(flat, lag, 0))
                     for lag in range(1, max_lag + 1)])


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
    residuals = _window_residuals(hu)
    if residuals is None:
        return math.nan
    stds = np.sqrt((residuals**2).sum(axis=(1, 2)) / (WINDOW_PX**2 - 3))
    dof = _effective_dof(residuals)
    return float(np.percentile(stds, _PERCENTILE) / math.sqrt(stats.chi2.ppf(_PERCENTILE / 100, dof) / dof))


def _window_residuals(hu: np.ndarray) -> np.ndarray | None:
    """[windows, 14, 14] residuals of every half-overlapping window wholly in soft tissue; None when a slice
    has fewer than ``_MIN_WINDOWS`` of them."""
    if min(hu.shape) < WINDOW_PX:
        return None
    step = _WINDOW_STEP_PX
    inside = sliding_window_view(_slice_soft_tissue(hu), (WINDOW_PX, WINDOW_PX))[::step, ::step].all(axis=(-1, -2))
    return plane_residuals(hu, inside) if inside.sum() >= _MIN_WINDOWS else None


def plane_residuals(image: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """[windows, 14, 14]: the half-overlapping 14x14 windows of a slice [H, W] (those ``inside`` marks, a
    boolean grid of window positions; default all), each minus its least-squares plane."""
    windows = sliding_window_view(image, (WINDOW_PX, WINDOW_PX))[::_WINDOW_STEP_PX, ::_WINDOW_STEP_PX]
    windows = (windows[inside] if inside is not None else windows).reshape(-1, WINDOW_PX**2).astype(np.float64)
    plane, _ = np.linalg.qr(_plane_basis())
    return (windows - (windows @ plane) @ plane.T).reshape(-1, WINDOW_PX, WINDOW_PX)


def _flattest(residuals: np.ndarray) -> np.ndarray:
    energy = (residuals**2).sum(axis=(1, 2))
    return residuals[energy <= np.percentile(energy, _PERCENTILE)]


def _lag_correlation(flat: np.ndarray, rows: int, cols: int) -> float:
    """Correlation of windows [N, m, m] between pixels ``rows`` down and ``cols`` right (either sign) apart."""
    m = flat.shape[-1]
    first = flat[:, : m - rows, max(0, -cols) : m - max(0, cols)]
    second = flat[:, rows:, max(0, cols) : m - max(0, -cols)]
    variance = (flat**2).mean()
    return float((first * second).mean() / variance) if variance > 0 else 0.0  # no noise: nothing correlates


def _effective_dof(residuals: np.ndarray) -> float:
    """Satterthwaite degrees of freedom tr(S)^2 / tr(S^2) of a window's noise, S built from the flattest
    windows' correlations up to ``_DOF_LAG`` px apart in each direction (stationary: S[i, j] = rho(j - i)).
    Clipped to [4, m^2 - 3]."""
    flat = _flattest(residuals)
    rows, cols = np.divmod(np.arange(WINDOW_PX**2), WINDOW_PX)
    d_rows, d_cols = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]
    near = (np.abs(d_rows) <= _DOF_LAG) & (np.abs(d_cols) <= _DOF_LAG)
    rho = {(r, c): _lag_correlation(flat, r, c) for r in range(_DOF_LAG + 1) for c in range(-_DOF_LAG, _DOF_LAG + 1)}
    rho[0, 0] = 1.0  # also for windows without any noise
    signs = np.where(d_rows >= 0, 1, -1)  # rho(-d) = rho(d)
    matrix = np.zeros((WINDOW_PX**2, WINDOW_PX**2))
    matrix[near] = [rho[r, c] for r, c in zip((signs * d_rows)[near], (signs * d_cols)[near])]
    dof = np.trace(matrix) ** 2 / np.sum(matrix * matrix)
    return float(np.clip(dof, 4, WINDOW_PX**2 - 3))


def _plane_basis() -> np.ndarray:
    """[pixels, 3]: constant, row and column ramps over one window (the plane a window is detrended by)."""
    rows, cols = np.mgrid[:WINDOW_PX, :WINDOW_PX] - (WINDOW_PX - 1) / 2
    return np.stack([np.ones(WINDOW_PX**2), rows.ravel(), cols.ravel()], axis=1)
