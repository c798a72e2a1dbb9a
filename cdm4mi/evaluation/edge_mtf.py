"""Edge-based MTF of a CT denoiser relative to the full dose, from the body/air boundary of patient images.

Physicists measure resolution as an MTF: edge spread function (ESF, HU against the distance to an edge)
→ line spread function (its derivative) → |Fourier transform|, normalized at zero frequency; MTF50 is the
frequency (cycles/mm) where it falls to one half (ICRU Report 87; the oversampled-edge method of
Judy 1976 and Samei et al. 1998). A patient's sharpest, highest-contrast edge is the skin against air
(~1000 HU). The edge is found once, in the full-dose image, to sub-pixel precision (the -500 HU iso-contour,
marching squares), and every pixel within ``band_px`` of it becomes a sample at its signed distance (mm,
positive inside the body); binning the samples of many slices in 0.1 px bins oversamples the ESF, as a
slanted edge does. Only stretches of skin with air outside and tissue inside (no lung, table or
arm within the band) are used.

The skin is not a clean step: a thin skin layer, fat and muscle lie within a few mm, so the full dose's own
ESF is object plus scanner. A linear filter h turns the full dose's LSF into h * LSF, so the ratio of the
two spectra is h's own MTF whatever the object: ``relative_mtf`` reports that ratio, the resolution a
method keeps of what the full dose shows (1 everywhere for the full dose itself), up to the highest frequency
the full dose shows at all (its own MTF >= 0.1, at most the pixels' Nyquist frequency): beyond it the ratio
is noise over nothing. For a non-linear denoiser the ratio depends on the edge's contrast (here ~1000 HU;
low-contrast detail may fare worse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, spatial
from scipy.signal.windows import tukey
from skimage import measure

from cdm4mi.evaluation.metrics import body_mask

EDGE_LEVEL_HU = -500.0  # halfway between air and soft tissue
BAND_PX = 12.0
BIN_PX = 0.1
MIN_REFERENCE_MTF = 0.1  # the full dose's MTF below which no relative MTF is read
_CONTOUR_STEP_PX = 0.05  # contour points this far apart: nearest-point distances are exact to ~1e-3 px
_MIN_SAMPLES = 2000
_PADDING = 4


@dataclass(frozen=True)
class EdgeSamples:
    """Pixels near clean stretches of the body edge: (slice, row, col) indices [N] and signed distance mm [N]."""

    slice_index: np.ndarray
    row: np.ndarray
    col: np.ndarray
    distance_mm: np.ndarray
    bin_mm: float
    band_mm: float
    nyquist_per_mm: float  # of the coarser pixel side: no MTF is reported above it


def edge_samples(full_dose_hu: np.ndarray, pixel_mm: tuple[float, float], band_px: float = BAND_PX,
                 level_hu: float = EDGE_LEVEL_HU) -> EdgeSamples | None:
    """Samples of the body/air edge of a full-dose slice [H, W] or volume [D, H, W] (HU), None if too few.

    A point of the ``level_hu`` contour counts when it lies on the body's outer boundary (``metrics.body_mask``)
    and, along the edge normal, the image stays above ``level_hu`` + 300 HU inside and below ``level_hu`` - 300
    outside from 2 px to ``band_px`` px. Pixels within ``band_px`` of such a point (their nearest contour
    point) are the samples; fewer than 2000 in all gives None.
    """
    volume = np.asarray(full_dose_hu, dtype=float)
    volume = volume[None] if volume.ndim == 2 else volume
    if volume.ndim != 3 or not band_px > 2:
        raise ValueError(f"edge_samples: need a slice or volume and band_px > 2, got {volume.shape}, {band_px}")
    scale = np.array([float(p) for p in pixel_mm])
    found = [_slice_samples(image, scale, band_px, level_hu) for image in volume]
    slices = np.concatenate([np.full(len(f[0]), k) for k, f in enumerate(found)]).astype(int)
    if len(slices) < _MIN_SAMPLES:
        return None
    row, col, distance = (np.concatenate([f[i] for f in found]) for i in range(3))
    return EdgeSamples(slices, row, col, distance, BIN_PX * float(scale.min()), band_px * float(scale.min()),
                       0.5 / float(scale.max()))


def edge_spread(volume_hu: np.ndarray, edges: EdgeSamples) -> tuple[np.ndarray, np.ndarray]:
    """ESF: bin centres (mm from the edge, inside positive) and the mean HU of ``volume_hu`` in each bin."""
    volume = np.asarray(volume_hu, dtype=float)
    volume = volume[None] if volume.ndim == 2 else volume
    values = volume[edges.slice_index, edges.row, edges.col]
    count = int(round(2 * edges.band_mm / edges.bin_mm))
    bins = np.clip(np.floor((edges.distance_mm + edges.band_mm) / edges.bin_mm).astype(int), 0, count - 1)
    centres = -edges.band_mm + (np.arange(count) + 0.5) * edges.bin_mm
    numbers = np.bincount(bins, minlength=count)
    sums = np.bincount(bins, values, minlength=count)
    filled = numbers > 0
    return centres, np.interp(centres, centres[filled], sums[filled] / numbers[filled])


def line_spread_spectrum(volume_hu: np.ndarray, edges: EdgeSamples) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cycles/mm) and the complex spectrum of the LSF (ESF derivative, Tukey-tapered at the band ends),
    zero-padded to ``_PADDING`` times its length: a finer frequency grid to read MTF50 on, no new information."""
    centres, esf = edge_spread(volume_hu, edges)
    lsf = np.gradient(esf, edges.bin_mm) * tukey(len(esf), 0.5)
    length = _PADDING * len(lsf)
    return np.fft.rfftfreq(length, edges.bin_mm), np.fft.rfft(lsf, length)


def edge_mtf(volume_hu: np.ndarray, edges: EdgeSamples) -> tuple[np.ndarray, np.ndarray]:
    """Absolute MTF of ``volume_hu`` at the edge: (cycles/mm up to Nyquist, |LSF spectrum| / its value at 0).

    Object and system together: a clean step edge gives the system's MTF; the skin's layers add their own.
    """
    frequency, spectrum = line_spread_spectrum(volume_hu, edges)
    magnitude = np.abs(spectrum)
    keep = frequency <= edges.nyquist_per_mm + 1e-9
    return frequency[keep], magnitude[keep] / max(magnitude[0], np.finfo(float).tiny)


def relative_mtf(volume_hu: np.ndarray, full_dose_hu: np.ndarray, edges: EdgeSamples) -> tuple[np.ndarray, np.ndarray]:
    """The MTF of ``volume_hu`` relative to the full dose (``edge_mtf`` of one over that of the other), up to
    the last frequency before the full dose's own MTF first drops below ``MIN_REFERENCE_MTF``."""
    frequency, method = edge_mtf(volume_hu, edges)
    _, reference = edge_mtf(full_dose_hu, edges)
    low = np.flatnonzero(reference < MIN_REFERENCE_MTF)
    stop = int(low[0]) if low.size else len(reference)
    return frequency[:stop], method[:stop] / reference[:stop]


def mtf50(frequency_per_mm: np.ndarray, mtf: np.ndarray, limit_per_mm: float | None = None) -> float:
    """First frequency where ``mtf`` falls to 0.5 (linear interpolation), or ``limit_per_mm`` (default the last
    frequency) if it never does up to there: resolution kept as far as it can be measured."""
    limit = float(frequency_per_mm[-1]) if limit_per_mm is None else float(limit_per_mm)
    below = np.flatnonzero((mtf < 0.5) & (frequency_per_mm <= limit))
    if below.size == 0:
        return limit
    k = int(below[0])
    if k == 0:
        return 0.0
    f0, f1, m0, m1 = frequency_per_mm[k - 1], frequency_per_mm[k], mtf[k - 1], mtf[k]
    return float(f0 + (m0 - 0.5) * (f1 - f0) / (m0 - m1))


def _slice_samples(image: np.ndarray, scale: np.ndarray, band_px: float,
                   level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, signed distances mm) of one slice's pixels near clean stretches of its body edge."""
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    body = body_mask(image)
    if not body.any():
        return empty
    boundary = body & ~ndimage.binary_erosion(body)
    near_boundary = ndimage.distance_transform_edt(~boundary)
    contours = [c for c in measure.find_contours(image, level) if len(c) > 1]
    if not contours:
        return empty
    points = np.concatenate([_densify(c) for c in contours])
    on_skin = near_boundary[tuple(np.clip(np.rint(points).astype(int), 0, np.array(image.shape) - 1).T)] <= 1.5
    smooth = ndimage.gaussian_filter(image, 1.0)
    gradient = np.stack([ndimage.map_coordinates(g, points.T, order=1) for g in np.gradient(smooth)], 1)
    normal = gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-9)  # towards the body
    steps = np.arange(2.0, band_px + 0.5)
    inside = np.stack([ndimage.map_coordinates(image, (points + t * normal).T, order=1, cval=-1000.0) for t in steps])
    outside = np.stack([ndimage.map_coordinates(image, (points - t * normal).T, order=1, cval=-1000.0) for t in steps])
    clean = on_skin & (inside > level + 300).all(0) & (outside < level - 300).all(0)
    if not clean.any():
        return empty
    rows, cols = np.nonzero(near_boundary <= band_px + 1)
    distance, nearest = spatial.cKDTree(points * scale).query(np.stack([rows, cols], 1) * scale)
    keep = clean[nearest] & (distance <= band_px * scale.min())
    sign = np.where(image[rows, cols] > level, 1.0, -1.0)
    return rows[keep], cols[keep], (sign * distance)[keep]


def _densify(contour: np.ndarray) -> np.ndarray:
    """Points along a polyline [n, 2] no more than ``_CONTOUR_STEP_PX`` apart."""
    segments = np.diff(contour, axis=0)
    counts = np.maximum(np.ceil(np.hypot(*segments.T) / _CONTOUR_STEP_PX).astype(int), 1)
    fractions = np.concatenate([np.arange(n) / n for n in counts])
    starts = np.repeat(np.arange(len(segments)), counts)
    return np.concatenate([contour[starts] + fractions[:, None] * segments[starts], contour[-1:]])
