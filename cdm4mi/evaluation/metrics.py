"""Per-slice image-quality metrics for CT denoising, in a stated HU window.

Every number depends on the HU window, so the window travels with every row: both images are
clipped to ``window = (low, high)`` HU and ``data_range = high - low`` (default [-1000, 1000] HU,
data_range 2000, as CoreDiff reports; [-160, 240] is the common soft-tissue alternative).

- ``psnr`` (dB): ``monai.metrics.PSNRMetric(max_val=data_range)`` on the windowed HU values,
  i.e. ``10·log10(data_range² / MSE)``. PSNR of identical slices (MSE = 0) is infinite; it is
  stored as ``None`` (JSON has no inf) and ``statistics`` leaves such slices out of PSNR means
  and counts them.
- ``ssim``: MONAI's SSIM (Wang et al. 2004: Gaussian window 11×11, σ = 1.5 px, k1 = 0.01,
  k2 = 0.03, no padding) through ``monai.metrics.regression.compute_ssim_and_cs`` — the function
  ``SSIMMetric`` calls — because it also returns the SSIM map needed for a masked mean. SSIM is
  not shift invariant (its luminance term depends on where zero is), so it is computed on
  ``(hu - low) / data_range`` in [0, 1] with data_range 1: the usual convention in LDCT papers,
  identical to SSIM of ``hu - low`` with ``data_range``, and kinder to float32 than raw HU.
- ``rmse_hu``, ``mae_hu``: root-mean-square and mean absolute error in HU of the windowed images
  (so errors outside the window are clipped away, as in PSNR).

With a ``mask`` (e.g. ``body_mask``), RMSE, MAE and PSNR use only the masked pixels, and SSIM is the
mean of the SSIM map over map pixels whose 11×11 window is centred on a masked pixel (the map
has no values within 5 px of the border). A slice whose mask is empty gets ``None`` for every metric.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs
from scipy import ndimage

DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
SOFT_TISSUE_HU_WINDOW: tuple[float, float] = (-160.0, 240.0)
METRICS: tuple[str, ...] = ("psnr", "ssim", "rmse_hu", "mae_hu")

SSIM_WINDOW_PX = 11
SSIM_SIGMA_PX = 1.5
_SSIM_BATCH = 16  # slices per SSIM call: bounds memory of the five 2D convolutions on 512² slices


def check_hu_window(window: tuple[float, float]) -> tuple[float, float]:
    """Return ``(low, high)`` as floats; ``ValueError`` unless both are finite and ``low < high``."""
    try:
        low, high = (float(value) for value in window)
    except (TypeError, ValueError) as error:
        raise ValueError(f"hu_window: expected (low, high) in HU, got {window!r}") from error
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"hu_window: need finite low < high in HU, got ({low}, {high})")
    return low, high


def slice_metrics(
    prediction_hu: np.ndarray,
    target_hu: np.ndarray,
    window: tuple[float, float] = DEFAULT_HU_WINDOW,
    mask: np.ndarray | None = None,
) -> list[dict]:
    """PSNR (dB), SSIM, RMSE (HU) and MAE (HU) of ``prediction_hu`` against ``target_hu`` per slice.

    Takes one slice [H, W] or a volume [D, H, W] (axial slices along the first axis), both in HU,
    and an optional boolean ``mask`` of the same shape. Returns one dict per slice with
    ``slice_index``, the four metrics (``None`` where undefined, see the module docstring),
    ``n_pixels`` (pixels scored), ``masked`` (whether a mask was given), ``window_low``,
    ``window_high`` and ``data_range``.
    """
    low, high = check_hu_window(window)
    data_range = high - low
    prediction, target = np.asarray(prediction_hu, dtype=np.float64), np.asarray(target_hu, dtype=np.float64)
    if prediction.shape != target.shape:
        raise ValueError(f"slice_metrics: prediction {prediction.shape} and target {target.shape} differ in shape")
    if prediction.ndim not in (2, 3):
        raise ValueError(f"slice_metrics: expected a slice [H, W] or volume [D, H, W], got shape {prediction.shape}")
    if prediction.ndim == 2:
        prediction, target = prediction[None], target[None]
        mask = None if mask is None else np.asarray(mask)[None]
    if min(prediction.shape[1:]) < SSIM_WINDOW_PX:
        raise ValueError(f"slice_metrics: slices must be at least {SSIM_WINDOW_PX} px a side for SSIM, "
                         f"got {prediction.shape[1:]}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != prediction.shape:
            raise ValueError(f"slice_metrics: mask {mask.shape} must match the images {prediction.shape}")
        mask = mask.astype(bool)
    if not (np.isfinite(prediction).all() and np.isfinite(target).all()):
        raise ValueError("slice_metrics: images contain NaN or inf")

    prediction, target = np.clip(prediction, low, high), np.clip(target, low, high)
    ssim_maps = _ssim_maps((prediction - low) / data_range, (target - low) / data_range)
    border = SSIM_WINDOW_PX // 2
    psnr_metric = PSNRMetric(max_val=data_range, reduction="none")

    rows = []
    for index in range(prediction.shape[0]):
        keep = np.ones(prediction.shape[1:], bool) if mask is None else mask[index]
        row = {"slice_index": index, "psnr": None, "ssim": None, "rmse_hu": None, "mae_hu": None,
               "n_pixels": int(keep.sum()), "masked": mask is not None,
               "window_low": low, "window_high": high, "data_range": data_range}
        if row["n_pixels"] > 0:
            difference = prediction[index][keep] - target[index][keep]
            mse = float(np.mean(difference**2))
            row["rmse_hu"] = math.sqrt(mse)
            row["mae_hu"] = float(np.mean(np.abs(difference)))
            if mse > 0:
                pixels = [torch.from_numpy(image[index][keep])[None] for image in (prediction, target)]
                row["psnr"] = float(psnr_metric(*pixels).item())
            ssim_keep = keep[border:-border, border:-border]
            if ssim_keep.any():
                row["ssim"] = float(ssim_maps[index][ssim_keep].mean())
        rows.append(row)
    return rows


def _ssim_maps(prediction_unit: np.ndarray, target_unit: np.ndarray) -> np.ndarray:
    """SSIM maps [D, H-10, W-10] of images in [0, 1] (data_range 1), computed by MONAI in batches."""
    maps = []
    for start in range(0, prediction_unit.shape[0], _SSIM_BATCH):
        batch = [torch.from_numpy(image[start : start + _SSIM_BATCH, None]) for image in (prediction_unit, target_unit)]
        ssim_map, _ = compute_ssim_and_cs(
            *batch, spatial_dims=2, kernel_size=(SSIM_WINDOW_PX,) * 2, kernel_sigma=(SSIM_SIGMA_PX,) * 2, data_range=1.0
        )
        maps.append(ssim_map[:, 0].double().numpy())
    return np.concatenate(maps)


def body_mask(hu_volume: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean body mask of a slice [H, W] or volume [D, H, W] in HU.

    Per axial slice: pixels above ``threshold_hu``, the largest connected component only (drops the
    table, lines and noise specks), holes filled (lungs, bowel gas). An all-air slice gives all False.
    """
    volume = np.asarray(hu_volume)
    if volume.ndim not in (2, 3):
        raise ValueError(f"body_mask: expected [H, W] or [D, H, W], got shape {volume.shape}")
    slices = volume[None] if volume.ndim == 2 else volume
    mask = np.zeros(slices.shape, dtype=bool)
    for index, image in enumerate(slices):
        labels, count = ndimage.label(image > threshold_hu)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0  # background
        mask[index] = ndimage.binary_fill_holes(labels == sizes.argmax())
    return mask[0] if volume.ndim == 2 else mask


def evaluate_patient(
    patient_id: str,
    outputs_hu: dict[str, np.ndarray],
    target_hu: np.ndarray,
    window: tuple[float, float] = DEFAULT_HU_WINDOW,
    mask: np.ndarray | None = None,
) -> list[dict]:
    """``slice_metrics`` for each method's output volume against one target, labelled for ``statistics``.

    ``outputs_hu`` maps a method name ("model", "gaussian", ...) to its volume in HU; returns the
    rows of all methods, each with ``patient_id`` (a pseudonymous id chosen by the caller) and ``method``.
    """
    rows = []
    for method, output in outputs_hu.items():
        for row in slice_metrics(output, target_hu, window=window, mask=mask):
            rows.append({"patient_id": str(patient_id), "method": method, **row})
    return rows
