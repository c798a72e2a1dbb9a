"""Noise, HU bias and the noise power spectrum of a CT denoiser in uniform regions of the full-dose scan.

After AAPM TG-233 (Samei et al., Med. Phys. 46(11), 2019) and ICRU Report 87: a physicist judges a denoiser
by how much noise it leaves, whether it shifts HU, and what the remaining noise looks like (its NPS), not
by PSNR alone. On patient images there is no uniform phantom, so square ROIs are found where the
full-dose image is flat (``find_uniform_rois``), and every method is read in the same ROIs:

- ``noise_hu``: the HU standard deviation of the method's image in the ROIs about the full dose's
  best-fitting plane in each ROI (the anatomy's slow trend), the method's mean bias taken out: noise of every
  frequency counts, also the blotches of a low-pass filter that a per-ROI mean would hide. The full dose's
  value is the SD about its own planes: its noise plus whatever fine texture its flattest regions keep.
- ``bias_hu``: mean over ROIs of (method's ROI mean − full dose's ROI mean): a denoiser should not move HU.
- NPS: of the *difference images* method − full dose in the ROIs (plane removed), 2D then radially averaged,
  in HU² mm² against cycles/mm; it integrates to the difference's variance. Its peak frequency says what
  the remaining noise looks like: CT's ramp-filtered noise peaks at mid frequencies, and a denoiser that
  blurs moves the peak down (blotchy, "plastic" texture). The shift is read against the low-dose input's
  difference image, which is the acquisition's own noise: same reconstruction kernel, so the same texture
  as the full dose's noise.

The difference images also hold the full dose's own noise (with the sign flipped): where the denoiser
leaves little noise, that noise, with the scanner's texture, dominates its NPS. Resolution (edge MTF50)
lives in ``edge_mtf``; ``physicist_measures`` computes everything for one patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cdm4mi.evaluation.edge_mtf import edge_samples, mtf50, relative_mtf
from cdm4mi.evaluation.metrics import body_mask
from cdm4mi.evaluation.observers import soft_tissue_mask

PHYSICS_METRICS: tuple[str, ...] = ("noise_hu", "bias_hu", "nps_peak_per_mm", "nps_peak_shift_per_mm",
                                    "mtf50_per_mm")
FULL_DOSE = "full_dose"  # the reference's own row among the methods
INPUT_METHOD = "low_dose_input"  # whose NPS peak the others' is compared with
MAX_STRUCTURE_HU = 12.0
ROI_MM = 40.0  # side of a uniform ROI: a liver or spleen holds several


def default_roi_px(pixel_mm: tuple[float, float]) -> int:
    """ROI side (px) for pixels of ``pixel_mm``: about ``ROI_MM``, even, 8 to 64 px."""
    return int(np.clip(2 * round(ROI_MM / max(pixel_mm) / 2), 8, 64))


def find_uniform_rois(full_dose_hu: np.ndarray, roi_px: int = 16, max_per_slice: int = 8,
                      max_structure_hu: float = MAX_STRUCTURE_HU, smooth_px: float = 1.5) -> np.ndarray:
    """Top-left corners [N, 3] (slice, row, col) of non-overlapping ``roi_px`` squares where the full dose is flat.

    ``full_dose_hu`` is a slice [H, W] or volume [D, H, W] in HU. A square qualifies when every pixel is soft
    tissue of the body (``observers.soft_tissue_mask`` within ``metrics.body_mask``) and the full dose, smoothed
    by a Gaussian of ``smooth_px`` (to see anatomy, not noise), varies by at most ``max_structure_hu`` (HU
    standard deviation about the square's best-fitting plane). The flattest squares are taken first, up to
    ``max_per_slice`` per slice.
    """
    volume = _as_volume(full_dose_hu, "full_dose_hu")
    size = int(roi_px)
    if size < 4 or max_per_slice < 1 or not max_structure_hu > 0:
        raise ValueError(f"find_uniform_rois: need roi_px >= 4, max_per_slice >= 1 and max_structure_hu > 0; "
                         f"got {size}, {max_per_slice}, {max_structure_hu}")
    corners = []
    if size > min(volume.shape[1:]):  # slices smaller than one square (a small field of view): none found
        return np.zeros((0, 3), dtype=int)
    for index, image in enumerate(volume):
        tissue = soft_tissue_mask(image, body_mask(image)).astype(float)
        structure = _window_plane_sd(ndimage.gaussian_filter(image, smooth_px), size)
        score = np.where((_window_sums(tissue, size) > size * size - 0.5) & (structure <= max_structure_hu),
                         structure, np.inf)
        for _ in range(max_per_slice):
            row, col = np.unravel_index(int(np.argmin(score)), score.shape)
            if not np.isfinite(score[row, col]):
                break
            corners.append((index, row, col))
            score[max(row - size + 1, 0):row + size, max(col - size + 1, 0):col + size] = np.inf  # no overlap
    return np.array(corners, dtype=int).reshape(-1, 3)


def extract_roi_stack(volume_hu: np.ndarray, corners: np.ndarray, roi_px: int) -> np.ndarray:
    """ROIs [N, roi_px, roi_px] (float64) of a slice or volume at ``corners`` [N, 3] (slice, row, col)."""
    volume = _as_volume(volume_hu, "volume_hu")
    return np.stack([volume[k, r:r + roi_px, c:c + roi_px] for k, r, c in np.asarray(corners, int)]).astype(float) \
        if len(corners) else np.zeros((0, roi_px, roi_px))


def remove_planes(rois: np.ndarray) -> np.ndarray:
    """Each ROI [N, s, s] minus its least-squares plane a + b·row + c·col."""
    n, size = rois.shape[0], rois.shape[-1]
    rows, cols = np.mgrid[:size, :size]
    design = np.stack([np.ones(size * size), rows.ravel() - (size - 1) / 2, cols.ravel() - (size - 1) / 2], 1)
    flat = rois.reshape(n, -1)
    return (flat - (flat @ np.linalg.pinv(design).T) @ design.T).reshape(rois.shape)


def roi_noise_hu(rois: np.ndarray, reference_rois: np.ndarray | None = None) -> float | None:
    """Pooled HU standard deviation of ROIs [N, s, s]; None without ROIs.

    Without ``reference_rois``: about each ROI's own least-squares plane (3 degrees of freedom per ROI; noise
    slower than the ROI is lost). With them: about the reference's plane in each ROI plus one mean offset over
    all ROIs (the bias), so the ROIs' own low-frequency noise counts too.
    """
    if len(rois) == 0:
        return None
    size = rois.shape[-1]
    if reference_rois is None:
        return float(np.sqrt(np.sum(remove_planes(rois) ** 2) / (len(rois) * (size * size - 3))))
    reference = np.asarray(reference_rois, float)
    residual = rois - (reference - remove_planes(reference))
    return float(np.sqrt(np.sum((residual - residual.mean()) ** 2) / (residual.size - 1)))


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """Radially averaged NPS: ``frequency_per_mm`` [K] (bin centres, 0 to Nyquist) and ``nps`` [K] in HU² mm²."""

    frequency_per_mm: np.ndarray
    nps: np.ndarray
    variance_hu2: float  # the 2D NPS integrated over frequency: the noise variance it describes

    def peak_per_mm(self) -> float | None:
        """Frequency of the NPS maximum (DC left out), refined by a parabola through the bins around it."""
        values = self.nps[1:]
        if values.size == 0 or not np.any(values > 0):
            return None
        k = int(np.argmax(values)) + 1
        step = self.frequency_per_mm[1] - self.frequency_per_mm[0]
        if 1 < k < len(self.nps) - 1:
            left, middle, right = self.nps[k - 1:k + 2]
            curvature = left - 2 * middle + right
            if curvature < 0:
                return float(self.frequency_per_mm[k] + step * 0.5 * (left - right) / curvature)
        return float(self.frequency_per_mm[k])

    def mean_per_mm(self) -> float | None:
        """NPS-weighted mean frequency (TG-233's f_av), DC left out."""
        weights = self.nps[1:]
        return float(np.sum(self.frequency_per_mm[1:] * weights) / weights.sum()) if weights.sum() > 0 else None


def noise_power_spectrum(noise_rois: np.ndarray, pixel_mm: tuple[float, float]) -> NoisePowerSpectrum:
    """NPS of noise-only ROIs [N, s, s] (HU) with pixels ``pixel_mm`` (row, col) in mm.

    NPS(fy, fx) = Δy Δx / s² · mean over ROIs of |DFT(ROI − plane)|², scaled by s² / (s² − 3) for the
    plane's degrees of freedom, so that it integrates to the noise variance. Radial bins are 1 / (s · Δ)
    wide (Δ the larger pixel side), from DC to the Nyquist frequency 1 / (2 Δ).
    """
    rois = np.asarray(noise_rois, float)
    if rois.ndim != 3 or rois.shape[1] != rois.shape[2] or len(rois) == 0:
        raise ValueError(f"noise_power_spectrum: need ROIs [N >= 1, s, s], got shape {rois.shape}")
    size = rois.shape[-1]
    dy, dx = (float(p) for p in pixel_mm)
    power = np.mean(np.abs(np.fft.fft2(remove_planes(rois))) ** 2, axis=0)
    nps2d = dy * dx / (size * size) * power * size * size / (size * size - 3)
    fy, fx = np.fft.fftfreq(size, dy), np.fft.fftfreq(size, dx)
    radius = np.hypot(fy[:, None], fx[None, :])
    step = 1.0 / (size * max(dy, dx))
    bins = np.rint(radius / step).astype(int)
    count = size // 2 + 1
    inside = bins < count
    sums = np.bincount(bins[inside], nps2d[inside], minlength=count)
    numbers = np.bincount(bins[inside], minlength=count)
    variance = float(nps2d.sum() / (size * dy * size * dx))
    return NoisePowerSpectrum(np.arange(count) * step, sums / np.maximum(numbers, 1), variance)


@dataclass
class PatientPhysics:
    """One patient's measures: ``rows`` (one per method, ``FULL_DOSE`` first) and the curves of the figures."""

    rows: list[dict]
    nps: dict[str, NoisePowerSpectrum]  # method -> NPS of method − full dose
    mtf: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> (cycles/mm, MTF relative to the full dose)


def physicist_measures(patient_id: str, outputs_hu: dict[str, np.ndarray], full_dose_hu: np.ndarray,
                       pixel_mm: tuple[float, float], roi_px: int | None = None) -> PatientPhysics:
    """Noise, bias, NPS peak (and its shift from ``INPUT_METHOD``'s) and MTF50 of every method's volume.

    ``outputs_hu`` maps a method to its volume [D, H, W] (HU) of the patient whose full dose is
    ``full_dose_hu``; ``pixel_mm`` is the in-plane (row, col) pixel size; uniform ROIs are ``roi_px`` squares
    (default ``default_roi_px``, about 40 mm), at most 8 per slice. One row per method plus a
    ``FULL_DOSE`` row (its own noise, bias 0, MTF50 at the cap); a measure that could not be taken (no
    uniform ROI, no clean body edge) is None. MTF50 is that of the method relative to the full dose
    (``edge_mtf.relative_mtf``), capped where that can be measured (the full dose's MTF >= 0.1, at most Nyquist)
    when it stays above 0.5 up to there.
    """
    full = _as_volume(full_dose_hu, "full_dose_hu")
    size = default_roi_px(pixel_mm) if roi_px is None else int(roi_px)
    corners = find_uniform_rois(full, size)
    full_rois = extract_roi_stack(full, corners, size)
    edges = edge_samples(full, pixel_mm)
    limit = None if edges is None else float(relative_mtf(full, full, edges)[0][-1])
    rows = [{"patient_id": str(patient_id), "method": FULL_DOSE, "noise_hu": roi_noise_hu(full_rois),
             "bias_hu": 0.0 if len(corners) else None, "nps_peak_per_mm": None, "nps_peak_shift_per_mm": None,
             "nps_mean_per_mm": None, "mtf50_per_mm": limit,
             "n_rois": len(corners), "roi_px": size, "n_edge_samples": 0 if edges is None else len(edges.distance_mm)}]
    result = PatientPhysics(rows, {}, {})
    for method, output in outputs_hu.items():
        volume = _as_volume(output, method)
        if volume.shape != full.shape:
            raise ValueError(f"physicist_measures: {method} has shape {volume.shape}, the full dose {full.shape}")
        rois = extract_roi_stack(volume, corners, size)
        row = {**rows[0], "method": method, "noise_hu": roi_noise_hu(rois, full_rois), "mtf50_per_mm": None,
               "bias_hu": float(np.mean(rois.mean(axis=(1, 2)) - full_rois.mean(axis=(1, 2)))) if len(rois) else None}
        if len(rois):
            spectrum = noise_power_spectrum(rois - full_rois, pixel_mm)
            result.nps[method] = spectrum
            row["nps_peak_per_mm"], row["nps_mean_per_mm"] = spectrum.peak_per_mm(), spectrum.mean_per_mm()
        if edges is not None:
            frequency, transfer = relative_mtf(volume, full, edges)
            result.mtf[method] = (frequency, transfer)
            row["mtf50_per_mm"] = mtf50(frequency, transfer)
        rows.append(row)
    reference = next((row["nps_peak_per_mm"] for row in rows if row["method"] == INPUT_METHOD), None)
    for row in rows[1:]:
        if reference is not None and row["nps_peak_per_mm"] is not None:
            row["nps_peak_shift_per_mm"] = row["nps_peak_per_mm"] - reference
    return result


def _as_volume(x: np.ndarray, name: str) -> np.ndarray:
    volume = np.asarray(x, dtype=float)
    if volume.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a slice [H, W] or volume [D, H, W] in HU, got shape {volume.shape}")
    return volume[None] if volume.ndim == 2 else volume


def _window_sums(image: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``image`` over every size x size window, indexed by its top-left pixel [H-size+1, W-size+1]."""
    table = np.pad(image.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


def _window_plane_sd(image: np.ndarray, size: int) -> np.ndarray:
    """HU standard deviation about the best-fitting plane of every size x size window (top-left indexed)."""
    n = size * size
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]].astype(float)
    total, squares = _window_sums(image, size), _window_sums(image**2, size)
    offset = np.arange(image.shape[0] - size + 1)[:, None] + (size - 1) / 2  # window centre row / col
    row_moment = _window_sums(image * rows, size) - offset * total
    col_moment = _window_sums(image * cols, size) - (np.arange(image.shape[1] - size + 1)[None, :] + (size - 1) / 2) * total
    spread = size * size * (size * size - 1) / 12  # sum of (row - centre)² over a window
    residual = squares - total**2 / n - (row_moment**2 + col_moment**2) / spread
    return np.sqrt(np.maximum(residual, 0) / n)
