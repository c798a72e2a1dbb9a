"""Low-contrast detectability of CT denoisers: lesion insertion, ROIs, model observers, invented structure.

After AAPM TG-233 (Samei et al., Med. Phys. 2019) and Barrett & Myers, *Foundations of Image Science*
(2004), ch. 13-14. Known disks are inserted into the full-dose image *before* the dose is simulated; every
method (full dose, low dose, each denoiser) is then read at the same centres, so observers compare
methods on the same lesions over the same background::

    with_lesions, lesions = insert_lesions(full_dose_hu, spacing_mm, (3, 5), (10, 20), 50, rng, roi_size=size)
    # simulate the low dose from ``with_lesions``, run every denoiser on it
    absent = signal_absent_centres(full_dose_hu, lesions, spacing_mm, size, 200, rng)
    present = class_centres(lesions)[(5.0, 10.0)]  # one (diameter mm, contrast HU) class
    channels = laguerre_gauss_channels(size, width_px=1.5 * 2.5 / spacing_mm)  # 1.5 x lesion radius
    for method_hu in (with_lesions, low_dose, model_output):
        d, lo, hi = dprime_with_ci(partial(cho_dprime, channels=channels),
                                   extract_rois(method_hu, present, size),
                                   extract_rois(method_hu, absent, size), rng=rng)

ROIs of several slices pool by concatenating the arrays; observers need a few hundred ROIs per class. Where
the dose is simulated twice (with and without lesions), the lesion-free images read at the lesion centres
give signal-absent ROIs over exactly the same anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

SOFT_TISSUE_HU: tuple[float, float] = (-100.0, 200.0)
_SUBSAMPLES = 16  # per pixel axis for disk coverage: total area within 4 % even for a 0.5 px disk


@dataclass(frozen=True)
class Lesion:
    """One inserted disk: centre pixel (row, col), diameter in mm, contrast in HU added to the background."""

    row: int
    col: int
    diameter_mm: float
    contrast_hu: float


def disk_profile(size: int, diameter_px: float) -> np.ndarray:
    """Unit-contrast disk [size, size] centred on pixel (size // 2, size // 2), in [0, 1].

    Each pixel holds the fraction of its area inside the disk (the disk convolved with a 1-pixel box),
    so a disk smaller than a pixel is still drawn and always carries its area pi r^2 in total.
    """
    if size < 1 or not diameter_px > 0:
        raise ValueError(f"disk_profile: need size >= 1 and diameter_px > 0, got {size}, {diameter_px}")
    sub = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5
    fine = ((np.arange(size) - size // 2)[:, None] + sub[None, :]).ravel()
    inside = fine[:, None] ** 2 + fine[None, :] ** 2 <= (diameter_px / 2) ** 2
    return inside.reshape(size, _SUBSAMPLES, size, _SUBSAMPLES).mean(axis=(1, 3))


def soft_tissue_mask(hu: np.ndarray, body_mask: np.ndarray | None = None,
                     hu_range: tuple[float, float] = SOFT_TISSUE_HU, median_size_px: int = 5) -> np.ndarray:
    """Boolean [H, W]: pixels whose median-filtered HU lie in ``hu_range`` (inside ``body_mask`` if given).

    The median over a ``median_size_px`` square ignores single noisy pixels yet keeps edges in place.
    The HU range alone already drops air, lung and bone; pass ``metrics.body_mask(hu)`` to drop the table.
    """
    image = _as_image(hu, "hu")
    smoothed = ndimage.median_filter(image, size=median_size_px, mode="nearest")
    mask = (smoothed >= hu_range[0]) & (smoothed <= hu_range[1])
    if body_mask is not None:
        if np.shape(body_mask) != image.shape:
            raise ValueError(f"body_mask: shape {np.shape(body_mask)} differs from hu {image.shape}")
        mask &= np.asarray(body_mask, bool)
    return mask


def insert_lesions(hu: np.ndarray, spacing_mm: float, diameters_mm: Sequence[float],
                   contrasts_hu: Sequence[float], per_class: int, rng: np.random.Generator,
                   body_mask: np.ndarray | None = None, *, margin_mm: float | None = None,
                   roi_size: int = 0) -> tuple[np.ndarray, list[Lesion]]:
    """Add soft-edged disks of every (diameter mm, contrast HU) pair to ``hu`` [H, W] at random centres.

    A centre is drawn uniformly among pixels where the disk plus a margin lies in soft tissue
    (``soft_tissue_mask``) and that keep every earlier lesion at an edge-to-edge gap of one margin; the
    margin is ``margin_mm`` or, by default, one diameter (the larger one for a pair). With ``roi_size`` (px),
    the ROI square fits in the image, its inscribed disk is soft tissue (as ``signal_absent_centres`` asks)
    and no other lesion's disk enters it. Classes take turns, ``per_class`` rounds; a class with no room
    left is skipped, so no attempts are wasted and fewer lesions than asked may come back (check the length).
    Returns the image with lesions (HU, float64) and the lesions in insertion order.
    """
    image = _as_image(hu, "hu")
    if not spacing_mm > 0 or per_class < 0 or roi_size < 0:
        raise ValueError(f"insert_lesions: need spacing_mm > 0, per_class >= 0, roi_size >= 0; "
                         f"got {spacing_mm}, {per_class}, {roi_size}")
    classes = [(float(d), float(c)) for d in diameters_mm for c in contrasts_hu]
    if not classes or min(d for d, _ in classes) <= 0:
        raise ValueError(f"insert_lesions: need positive diameters_mm and some contrasts_hu, got {classes}")
    radius = [d / 2 / spacing_mm for d, _ in classes]
    gap = [(d if margin_mm is None else margin_mm) / spacing_mm for d, _ in classes]
    clearance = _clearance_px(soft_tissue_mask(image, body_mask))
    fits = _roi_fits(image.shape, roi_size) & (clearance >= roi_size / 2)
    # +1 px: the soft edge reaches up to ~0.7 px beyond the radius
    free = [fits & (clearance > r + g + 1) for r, g in zip(radius, gap)]
    output, lesions = image.copy(), []
    for _ in range(per_class):
        for k, (diameter, contrast) in enumerate(classes):
            candidates = np.flatnonzero(free[k])
            if candidates.size == 0:
                continue
            row, col = divmod(int(rng.choice(candidates)), image.shape[1])
            _add_disk(output, row, col, 2 * radius[k], contrast)
            lesions.append(Lesion(row, col, diameter, contrast))
            for j in range(len(classes)):
                separation = radius[j] + radius[k] + max(gap[j], gap[k])
                if roi_size:  # neither lesion's ROI may hold the other's disk
                    separation = max(separation, roi_size / math.sqrt(2) + max(radius[j], radius[k]) + 1)
                _clear_disk(free[j], row, col, separation)
    return output, lesions


def class_centres(lesions: Sequence[Lesion]) -> dict[tuple[float, float], np.ndarray]:
    """Centres [N, 2] (row, col px) of the lesions of each (diameter_mm, contrast_hu) class."""
    centres: dict[tuple[float, float], list[tuple[int, int]]] = {}
    for lesion in lesions:
        centres.setdefault((lesion.diameter_mm, lesion.contrast_hu), []).append((lesion.row, lesion.col))
    return {key: np.array(value, dtype=int).reshape(-1, 2) for key, value in centres.items()}


def signal_absent_centres(hu: np.ndarray, lesions: Sequence[Lesion], spacing_mm: float, roi_size: int,
                          n: int, rng: np.random.Generator,
                          body_mask: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n`` ROI centres [n_found, 2] (row, col px) for signal-absent ROIs of ``roi_size`` px.

    Each ROI fits in the image, its inscribed disk is soft tissue (``soft_tissue_mask`` of ``hu``, the
    image before insertion), it holds no lesion pixel (soft edge included) and overlaps no other absent
    ROI, which keeps the samples independent as the bootstrap assumes. Dense lesions leave little room:
    insert fewer per slice and pool slices, or read lesion-free images at the lesion centres instead.
    """
    image = _as_image(hu, "hu")
    if roi_size < 1 or n < 0 or not spacing_mm > 0:
        raise ValueError(f"signal_absent_centres: need roi_size >= 1, n >= 0, spacing_mm > 0; "
                         f"got {roi_size}, {n}, {spacing_mm}")
    free = _roi_fits(image.shape, roi_size)
    free &= _clearance_px(soft_tissue_mask(image, body_mask)) >= roi_size / 2
    for lesion in lesions:
        reach = math.ceil(lesion.diameter_mm / 2 / spacing_mm) + 1  # soft edge included
        _clear_box(free, lesion.row, lesion.col, roi_size // 2 + reach)
    centres = []
    while len(centres) < n:
        candidates = np.flatnonzero(free)
        if candidates.size == 0:
            break
        row, col = divmod(int(rng.choice(candidates)), image.shape[1])
        centres.append((row, col))
        _clear_box(free, row, col, roi_size - 1)
    return np.array(centres, dtype=int).reshape(-1, 2)


def extract_rois(image: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """ROIs [N, size, size] (float64, units of ``image``) whose pixel (size // 2, size // 2) is each centre."""
    image = _as_image(image, "image")
    centres = np.asarray(centres, dtype=int).reshape(-1, 2)
    start = centres - size // 2
    if size < 1 or (start < 0).any() or (start + size > np.array(image.shape)).any():
        raise ValueError(f"extract_rois: every {size} px ROI must lie inside the {image.shape} image")
    return np.stack([image[r:r + size, c:c + size] for r, c in start]) if len(start) else np.zeros((0, size, size))


def laguerre_gauss_channels(size: int, n_channels: int = 10, *, width_px: float) -> np.ndarray:
    """Laguerre-Gauss channels [n_channels, size, size] centred on pixel (size // 2, size // 2).

    u_p(r) = sqrt(2) / a * exp(-pi r^2 / a^2) * L_p(2 pi r^2 / a^2), a = ``width_px`` (Barrett & Myers
    ch. 14); orthonormal over the plane. For a disk of radius R px (2 to 8), a = 1.5 R keeps >= 97 % of its
    energy in the span of 10 channels; ROIs should be wide enough that the highest channel has decayed at the border.
    """
    if size < 1 or n_channels < 1 or not width_px > 0:
        raise ValueError(f"laguerre_gauss_channels: need size, n_channels >= 1 and width_px > 0, "
                         f"got {size}, {n_channels}, {width_px}")
    offsets = np.arange(size) - size // 2
    x = 2 * np.pi * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / width_px**2
    return np.stack([math.sqrt(2) / width_px * np.exp(-x / 2) * special.eval_laguerre(p, x)
                     for p in range(n_channels)])


def npw_dprime(present: np.ndarray, absent: np.ndarray, template: np.ndarray | None = None, *,
               holdout: bool = True) -> float:
    """Non-prewhitening matched filter d': t = <w, g>, d' = (mean t_p - mean t_a) / sqrt((var t_p + var t_a) / 2).

    ``present`` [N, s, s], ``absent`` [M, s, s]; w = ``template`` [s, s] (e.g. the inserted disk), else
    mean present - mean absent. An estimated template read on its own ROIs is optimistic (its noise
    correlates with theirs); ``holdout`` (default) fits it on the even ROIs and reads it on the odd ones and
    vice versa, averaging the two d'. A noisy template lowers d' instead (pessimistic), the more so the
    larger the ROI: with a known signal, pass it as ``template``.
    """
    p, a = _flat_rois(present, absent, 4 if holdout and template is None else 2)
    if template is not None:
        w = np.asarray(template, float).ravel()
        if w.size != p.shape[1]:
            raise ValueError(f"npw_dprime: template has {w.size} pixels, ROIs {p.shape[1]}")
        return _dprime(p @ w, a @ w)
    if holdout:
        return _cross_fitted(p, a, _mean_difference)
    w = _mean_difference(p, a)
    return _dprime(p @ w, a @ w)


def cho_dprime(present: np.ndarray, absent: np.ndarray, channels: np.ndarray, *, holdout: bool = True,
               ridge: float = 1e-6) -> float:
    """Channelized Hotelling observer d' of ROIs ``present`` [N, s, s] vs ``absent`` [M, s, s].

    Channel outputs v = U^T g (``channels`` U [C, s, s]); dv = mean v_p - mean v_a; S = mean of the two
    class covariances + ``ridge`` x (mean channel variance) x I, which only guards against a singular S.
    Without ``holdout``: d'^2 = dv^T S^-1 dv on all ROIs (resubstitution, optimistic by ~C / N). With
    ``holdout`` (default): the template S^-1 dv is fitted on the even ROIs and read on the odd ones and vice
    versa, d' as in ``npw_dprime``, averaged over the two folds (can be negative when there is no signal).
    """
    p, a = _flat_rois(present, absent, 4 if holdout else 2)
    u = np.asarray(channels, float).reshape(len(channels), -1)
    if u.shape[1] != p.shape[1]:
        raise ValueError(f"cho_dprime: channels have {u.shape[1]} pixels, ROIs {p.shape[1]}")

    def fit(tp: np.ndarray, ta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vp, va = tp @ u.T, ta @ u.T
        s = (np.atleast_2d(np.cov(vp, rowvar=False)) + np.atleast_2d(np.cov(va, rowvar=False))) / 2
        s += ridge * max(np.trace(s) / len(s), np.finfo(float).tiny) * np.eye(len(s))
        dv = vp.mean(0) - va.mean(0)
        return np.linalg.solve(s, dv), dv

    if holdout:
        return _cross_fitted(p, a, lambda tp, ta: u.T @ fit(tp, ta)[0])  # channel template in image space
    w, dv = fit(p, a)
    return math.sqrt(max(float(dv @ w), 0.0))


def dprime_with_ci(observer_fn: Callable[[np.ndarray, np.ndarray], float], present: np.ndarray,
                   absent: np.ndarray, *, rng: np.random.Generator, n_boot: int = 200,
                   level: float = 0.95) -> tuple[float, float, float]:
    """d' of ``observer_fn(present, absent)`` and its percentile bootstrap interval ``(d, lo, hi)``.

    Present and absent ROIs are resampled independently. A d' read on the ROIs its template was fitted
    on is optimistic (resubstitution bias), hence the observers' ``holdout``; even and odd ROIs are
    resampled separately and stay even and odd, so a ``holdout`` observer never sees one ROI in both its
    fitting and its reading half (plain resampling would bring the optimism back through duplicates).
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"dprime_with_ci: need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    present, absent = np.asarray(present, float), np.asarray(absent, float)
    estimate = float(observer_fn(present, absent))
    boots = [observer_fn(present[_parity_resample(len(present), rng)], absent[_parity_resample(len(absent), rng)])
             for _ in range(n_boot)]
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(lo), float(hi)


def invented_structure(output: np.ndarray, full_dose: np.ndarray, low_dose: np.ndarray, noise_sigma_hu: float,
                       spacing_mm: float, threshold_sigmas: float = 3.0, min_area_px: int = 4, *,
                       mask: np.ndarray | None = None, smooth_px: float = 1.0,
                       explain_smooth_px: float = 2.0) -> tuple[int, list[float]]:
    """Blobs in output - full dose (HU [H, W] each) that the low-dose input does not explain.

    r = Gaussian(output - full_dose, ``smooth_px``). A blob is a connected region (4-connectivity) of
    r > T or of r < -T, T = ``threshold_sigmas`` x ``noise_sigma_hu``, with >= ``min_area_px`` pixels (inside
    ``mask`` if given). ``noise_sigma_hu`` is the per-pixel std of output - full dose where nothing was
    invented (at least the full dose's own noise). T is *not* lowered for the smoothing: it bounds the blob
    amplitude, while white noise smoothed by 1 px keeps 0.28 of its std (1 / (2 sqrt(pi) sigma)), so a
    3-sigma T is ~10 of its own stds and noise alone almost never makes a blob. A blob is explained when
    e = Gaussian(low_dose, ``explain_smooth_px``) - full_dose has, averaged over the blob, the sign of r's
    blob mean and at least half its magnitude (blur of edges, and structure the input really shows).
    Returns the count of unexplained blobs and their areas in mm^2 (px x ``spacing_mm``^2).
    """
    output, full_dose, low_dose = (_as_image(x, name) for x, name in
                                   ((output, "output"), (full_dose, "full_dose"), (low_dose, "low_dose")))
    if not output.shape == full_dose.shape == low_dose.shape or not noise_sigma_hu > 0:
        raise ValueError(f"invented_structure: need equal shapes and noise_sigma_hu > 0, got "
                         f"{output.shape}, {full_dose.shape}, {low_dose.shape}, {noise_sigma_hu}")
    residual = ndimage.gaussian_filter(output - full_dose, smooth_px)
    explained_by = ndimage.gaussian_filter(low_dose, explain_smooth_px) - full_dose
    inside = np.ones(output.shape, bool) if mask is None else np.asarray(mask, bool)
    threshold = threshold_sigmas * noise_sigma_hu
    areas = []
    for blobs_mask in (residual > threshold, residual < -threshold):
        labels, count = ndimage.label(blobs_mask & inside)
        index = np.arange(1, count + 1)
        size = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        r, e = ndimage.mean(residual, labels, index), ndimage.mean(explained_by, labels, index)
        explained = (np.sign(e) == np.sign(r)) & (np.abs(e) >= 0.5 * np.abs(r))
        areas += [float(n) * spacing_mm**2 for n in size[(size >= min_area_px) & ~explained]]
    return len(areas), areas


def _as_image(x: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(x, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"{name}: expected one slice [H, W], got shape {image.shape}")
    return image


def _clearance_px(mask: np.ndarray) -> np.ndarray:
    """Distance (px) from each pixel to the nearest pixel outside ``mask``; the image border counts as outside."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _roi_fits(shape: tuple[int, int], roi_size: int) -> np.ndarray:
    """Where a ``roi_size`` ROI centred as in ``extract_rois`` lies inside the image."""
    fits = np.zeros(shape, bool)
    low = roi_size // 2
    fits[low:shape[0] - roi_size + low + 1, low:shape[1] - roi_size + low + 1] = True
    return fits


def _add_disk(image: np.ndarray, row: int, col: int, diameter_px: float, contrast_hu: float) -> None:
    """Add ``contrast_hu`` x ``disk_profile`` centred on (row, col) in place, cut at the image border."""
    half = math.ceil(diameter_px / 2) + 1
    disk = contrast_hu * disk_profile(2 * half + 1, diameter_px)
    r0, c0 = max(row - half, 0), max(col - half, 0)
    window = image[r0:row + half + 1, c0:col + half + 1]
    window += disk[r0 - row + half:r0 - row + half + window.shape[0], c0 - col + half:c0 - col + half + window.shape[1]]


def _clear_disk(free: np.ndarray, row: int, col: int, radius: float) -> None:
    half = math.ceil(radius)
    r0, c0 = max(row - half, 0), max(col - half, 0)
    window = free[r0:row + half + 1, c0:col + half + 1]
    rows, cols = np.ogrid[r0 - row:r0 - row + window.shape[0], c0 - col:c0 - col + window.shape[1]]
    window[rows**2 + cols**2 < radius**2] = False


def _clear_box(free: np.ndarray, row: int, col: int, half: int) -> None:
    free[max(row - half, 0):row + half + 1, max(col - half, 0):col + half + 1] = False


def _flat_rois(present: np.ndarray, absent: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    p, a = np.asarray(present, float), np.asarray(absent, float)
    if p.ndim != 3 or a.ndim != 3 or p.shape[1:] != a.shape[1:]:
        raise ValueError(f"observer: expected ROIs [N, s, s] and [M, s, s], got {p.shape} and {a.shape}")
    if min(len(p), len(a)) < minimum:
        raise ValueError(f"observer: need >= {minimum} ROIs per class, got {len(p)} present, {len(a)} absent")
    return p.reshape(len(p), -1), a.reshape(len(a), -1)


def _mean_difference(present: np.ndarray, absent: np.ndarray) -> np.ndarray:
    return present.mean(0) - absent.mean(0)


def _dprime(t_present: np.ndarray, t_absent: np.ndarray) -> float:
    pooled = math.sqrt((t_present.var(ddof=1) + t_absent.var(ddof=1)) / 2)
    return float((t_present.mean() - t_absent.mean()) / pooled) if pooled > 0 else float("nan")


def _cross_fitted(p: np.ndarray, a: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
    """Two-fold d': template fitted on even ROIs, read on odd ones, and the reverse; mean of the two."""
    folds = []
    for train, test in ((0, 1), (1, 0)):
        w = fit(p[train::2], a[train::2])
        folds.append(_dprime(p[test::2] @ w, a[test::2] @ w))
    return float(np.mean(folds))


def _parity_resample(n: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap indices of n items that keep even positions drawn from even items and odd from odd."""
    index = np.empty(n, dtype=int)
    for parity in (0, 1):
        pool = np.arange(parity, n, 2)
        index[parity::2] = rng.choice(pool, size=pool.size)
    return index
