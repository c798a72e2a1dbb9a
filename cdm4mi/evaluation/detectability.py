"""Low-contrast detectability of denoised CT: lesions inserted per slice, ROIs pooled over slices and patients,
CHO and NPW d' per method and lesion class, the contrast each method keeps, and which classes it keeps.

Built on ``observers`` (insertion, ROIs, channels, d'); used by ``cdm4mi evaluate --detectability`` and by
``benchmarks/bench_quality.py``. The same lesions are read in the full dose and in every method's output, so
the methods are compared on the same signals over the same background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

from cdm4mi.evaluation.metrics import body_mask
from cdm4mi.evaluation.observers import (
    Lesion,
    cho_dprime,
    disk_profile,
    dprime_with_ci,
    extract_rois,
    insert_lesions,
    laguerre_gauss_channels,
    npw_dprime,
    signal_absent_centres,
)

DISK_ROI_PX = 8  # lesion ROIs are resampled so that the disk spans this many pixels (classes pool over patients)
MIN_ROIS = 8  # per class and kind below which no d' is reported


@dataclass(frozen=True)
class LesionStudy:
    """What ``cdm4mi evaluate --detectability`` inserts: every (diameter mm, contrast HU) pair, ``per_class``
    rounds per slice in up to ``max_slices`` evenly spaced slices of each patient, placed with ``seed``."""

    diameters_mm: tuple[float, ...] = (5.0, 10.0)
    contrasts_hu: tuple[float, ...] = (20.0, 40.0)
    per_class: int = 3
    max_slices: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.diameters_mm or not self.contrasts_hu or min(self.diameters_mm) <= 0 or self.per_class < 1 \
                or self.max_slices < 1:
            raise ValueError(f"LesionStudy: need positive diameters_mm, some contrasts_hu, per_class >= 1 and "
                             f"max_slices >= 1; got {self}")

    def slices(self, depth: int) -> list[int]:
        """The slices of a ``depth``-slice volume that get lesions."""
        return sorted({int(k) for k in np.linspace(0, depth - 1, min(depth, self.max_slices)).round()})


def roi_size_px(diameter_mm: float, pixel_mm: float) -> int:
    """Side of a lesion ROI (odd, px): the disk and a ring of background as wide as its radius."""
    return 2 * math.ceil(diameter_mm / pixel_mm) + 1


def common_pixel_mm(diameter_mm: float, roi_pixel_mm: float | None) -> float:
    """The pixel size (mm) lesion ROIs of a class are resampled to: ``roi_pixel_mm``, or the diameter / 8."""
    return diameter_mm / DISK_ROI_PX if roi_pixel_mm is None else float(roi_pixel_mm)


def insert_volume_lesions(full_dose_hu: np.ndarray, pixel_mm: float, diameters_mm: Sequence[float],
                          contrasts_hu: Sequence[float], per_class: int, rng: np.random.Generator,
                          slices: Sequence[int] | None = None) -> tuple[np.ndarray, list[list[Lesion]]]:
    """``observers.insert_lesions`` on each slice of a volume [D, H, W] (HU), inside its body (the table left out).

    Only ``slices`` (default all) get lesions. Returns the volume with lesions (float64) and, per slice, the
    lesions placed (an empty list for a slice without any); ROIs of ``roi_size_px`` of the largest diameter fit.
    """
    volume = np.asarray(full_dose_hu, dtype=float)
    reference, placed = volume.copy(), [[] for _ in range(len(volume))]
    size = roi_size_px(max(diameters_mm), pixel_mm)
    for k in range(len(volume)) if slices is None else slices:
        reference[k], placed[k] = insert_lesions(volume[k], pixel_mm, diameters_mm, contrasts_hu, per_class, rng,
                                                 body_mask=body_mask(volume[k]), roi_size=size)
    return reference, placed


def lesion_classes(lesions: Sequence[Sequence[Lesion]]) -> list[tuple[float, float]]:
    """The (diameter mm, contrast HU) classes among the lesions of every slice, sorted."""
    return sorted({(lesion.diameter_mm, lesion.contrast_hu) for placed in lesions for lesion in placed})


def lesion_rois(lesion_free_hu: np.ndarray, lesions: Sequence[Sequence[Lesion]], pixel_mm: float,
                outputs: dict[str, list[np.ndarray]], seed: int, *,
                absent_outputs: dict[str, list[np.ndarray]] | None = None,
                roi_pixel_mm: float | None = None) -> dict[tuple, list[np.ndarray]]:
    """Signal-present and signal-absent ROIs of each method and lesion class, read at the same centres in all.

    ``outputs`` maps a method to its volumes [D, H, W] (HU; several noise draws pool) of the images holding
    the lesions (``lesions[k]`` those of slice k). Present ROIs sit at the lesion centres. Absent ROIs: with
    ``absent_outputs`` (the same methods run on the same scan without lesions), the same centres in those
    images, over exactly the same anatomy; without it, lesion-free soft-tissue centres of ``lesion_free_hu``
    (``observers.signal_absent_centres``, drawn with ``seed``) in the images with lesions. ROIs are resampled
    to ``common_pixel_mm`` (float32) so classes pool over patients of different pixel sizes.
    Returns {(method, diameter_mm, contrast_hu): [present [N, s, s], absent [M, s, s]]}.
    """
    rng = np.random.default_rng(seed)
    pooled: dict[tuple, list[np.ndarray]] = {}
    for diameter, contrast in lesion_classes(lesions):
        size = roi_size_px(diameter, pixel_mm)
        common = roi_size_px(diameter, common_pixel_mm(diameter, roi_pixel_mm))
        present_at, absent_at = [], []
        for k, placed in enumerate(lesions):
            centres = [(lesion.row, lesion.col) for lesion in placed
                       if (lesion.diameter_mm, lesion.contrast_hu) == (diameter, contrast)]
            present_at.append(np.array(centres, dtype=int).reshape(-1, 2))
            absent_at.append(present_at[-1] if absent_outputs is not None or not centres else
                             signal_absent_centres(lesion_free_hu[k], placed, pixel_mm, size, len(centres), rng))
        for method, draws in outputs.items():
            absent_draws = draws if absent_outputs is None else absent_outputs[method]
            rois = [_resampled(draws, present_at, size, common), _resampled(absent_draws, absent_at, size, common)]
            entry = pooled.setdefault((method, diameter, contrast), [np.zeros((0, common, common), np.float32)] * 2)
            entry[0], entry[1] = np.concatenate([entry[0], rois[0]]), np.concatenate([entry[1], rois[1]])
    return pooled


def pool_rois(into: dict[tuple, list[np.ndarray]], more: dict[tuple, list[np.ndarray]]) -> dict[tuple, list[np.ndarray]]:
    """Add the ROIs of ``more`` (e.g. another patient's) to ``into``, class by class; returns ``into``."""
    for key, (present, absent) in more.items():
        entry = into.setdefault(key, [present[:0], absent[:0]])
        entry[0], entry[1] = np.concatenate([entry[0], present]), np.concatenate([entry[1], absent])
    return into


def detectability(pooled: dict[tuple, list[np.ndarray]], seed: int, roi_pixel_mm: float | None = None,
                  n_boot: int = 200) -> list[dict]:
    """CHO (10 Laguerre-Gauss channels, width 1.5 x the lesion radius) and NPW d' with 95 % bootstrap CIs, per
    method and lesion class of ``lesion_rois``' output (classes with fewer than ``MIN_ROIS`` ROIs are skipped)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (method, diameter, contrast), (present, absent) in sorted(pooled.items()):
        if len(present) < MIN_ROIS or len(absent) < MIN_ROIS:
            continue
        width = 1.5 * diameter / 2 / common_pixel_mm(diameter, roi_pixel_mm)
        channels = laguerre_gauss_channels(present.shape[-1], width_px=width)
        rows.append({"method": method, "lesion_mm": diameter, "lesion_hu": contrast,
                     "rois": [len(present), len(absent)],
                     "cho": dprime_with_ci(lambda p, a: cho_dprime(p, a, channels), present, absent,
                                           rng=rng, n_boot=n_boot),
                     "npw": dprime_with_ci(npw_dprime, present, absent, rng=rng, n_boot=n_boot)})
    return rows


def classes_lost(rows: Sequence[dict], method: str, reference: str = "low_dose_input") -> list[tuple[float, float]] | None:
    """Lesion classes whose CHO d' of ``method`` lies below the ``reference``'s, even at its upper 95 % bound.

    No processing can raise the ideal observer's d' (the data-processing inequality), so such a drop is lost
    information, not just a change of texture. A d' that cannot be computed (ROIs without any variation: the
    method erased everything) counts as lost. None when ``detectability`` has no row of ``method``.
    """
    mine = [row for row in rows if row["method"] == method]
    if not mine:
        return None
    base = {(row["lesion_mm"], row["lesion_hu"]): row["cho"][0] for row in rows if row["method"] == reference}
    lost = []
    for row in mine:
        key = (row["lesion_mm"], row["lesion_hu"])
        if key in base and math.isfinite(base[key]) and not row["cho"][2] >= base[key]:  # NaN: lost
            lost.append(key)
    return lost


def contrast_kept(with_lesions_hu: np.ndarray, without_lesions_hu: np.ndarray, lesions: Sequence[Sequence[Lesion]],
                  pixel_mm: float) -> float | None:
    """Mean over lesions of the fraction of its contrast a method keeps (1 = all, 0 = erased).

    Per lesion: the least-squares amplitude of the inserted disk in (method on the scan with lesions − method on
    the same scan without) over its ROI, divided by the inserted contrast. A blur that spreads the disk lowers
    it; noise common to both images cancels. None without lesions.
    """
    with_lesions, without = np.asarray(with_lesions_hu, float), np.asarray(without_lesions_hu, float)
    kept = []
    for k, placed in enumerate(lesions):
        for lesion in placed:
            size = roi_size_px(lesion.diameter_mm, pixel_mm)
            disk = disk_profile(size, lesion.diameter_mm / pixel_mm)
            centre = np.array([[lesion.row, lesion.col]])
            difference = (extract_rois(with_lesions[k], centre, size) - extract_rois(without[k], centre, size))[0]
            kept.append(float(np.sum(difference * disk) / np.sum(disk * disk)) / lesion.contrast_hu)
    return float(np.mean(kept)) if kept else None


def _resampled(draws: list[np.ndarray], centres: list[np.ndarray], size: int, common: int) -> np.ndarray:
    """ROIs [N, common, common] (float32) of every draw at every slice's centres, resampled bilinearly."""
    found = [extract_rois(image[k], where, size) for image in draws for k, where in enumerate(centres) if len(where)]
    stack = np.concatenate(found) if found else np.zeros((0, size, size))
    return np.stack([resize(roi, (common, common), order=1, anti_aliasing=False, preserve_range=True)
                     for roi in stack]).astype(np.float32) if len(stack) else np.zeros((0, common, common), np.float32)
