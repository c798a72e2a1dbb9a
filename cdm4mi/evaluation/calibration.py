"""Calibrated uncertainty: scale the spread of ``--samples`` draws so that mean ± 2 std covers the truth.

The spread between posterior draws of a warm-started sampler is far smaller than the error against a
full-dose scan (measured on real CT: a ±2 spread band covers about 20 % of body voxels), because most of the
error is what no draw can know: the full-dose scan's own noise, and the model's bias. Split conformal
calibration (Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2021; for images
Angelopoulos et al. 2022, "Image-to-image regression with distribution-free uncertainty quantification")
turns the spread into a band of known coverage: on calibration scans whose truth is known, the score of a
voxel is ``|mean - truth| / (spread + offset * input_noise)``, and the band's half-width is the
``coverage`` quantile of the scores (the finite-sample ``ceil((n + 1) q) / n`` level) times that
denominator. The ``offset`` term keeps voxels where the draws agree (flat regions, zero spread) from
getting a zero band; it is chosen among ``OFFSETS`` as the one giving the narrowest mean band.

The calibrated std (``DenoiseResult.std``) is half that half-width, so "±2 std" reads as usual; it is
stored in the checkpoint's card (``uncertainty``) and applied by ``denoise_volume`` to every scan.
Calibration scans are the cohort's validation patients, else its training patients (then the band is
optimistic: the model has seen them); low dose is simulated from their full-dose scans at the doses the
recipe trains on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdm4mi.cohort.manifest import load_manifest
from cdm4mi.data.dose_augmentation import DoseAugmentation
from cdm4mi.evaluation.metrics import body_mask
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import Scan, load_scan
from cdm4mi.simulate.relative_dose import simulate_relative_dose
from cdm4mi.training.checkpoint import load_module, store_card_entry
from cdm4mi.training.module import DiffusionModule

OFFSETS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # multiples of the input's noise std added to the spread


def conformal_band(errors: np.ndarray, spread: np.ndarray, noise: np.ndarray, coverage: float = 0.95
                   ) -> dict[str, float]:
    """The band ``scale * (spread + offset * noise)`` (a 2-std half-width is ``2 * scale * ...``) that covers
    ``coverage`` of the calibration voxels, with the offset of ``OFFSETS`` giving the narrowest mean band.

    ``errors`` = |mean - truth|, ``spread`` = std over draws, ``noise`` = the input's noise std, per voxel
    (flat arrays, same units)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage: must lie in (0, 1), got {coverage}")
    errors, spread, noise = (np.asarray(a, dtype=np.float64).ravel() for a in (errors, spread, noise))
    n = errors.size
    if n == 0:
        raise ValueError("calibration: no voxels to calibrate on (empty body masks)")
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    best: dict[str, float] | None = None
    for offset in OFFSETS:
        denominator = spread + offset * noise
        if np.any(denominator <= 0):
            continue  # zero spread with no offset: a voxel no scale can cover
        quantile = float(np.quantile(errors / denominator, level, method="higher"))
        width = quantile * float(denominator.mean())
        if best is None or width < best["mean_half_width"]:
            best = {"offset": offset, "scale": quantile / 2, "mean_half_width": width}
    if best is None:
        raise ValueError("calibration: the draws never differ and the input noise is 0; draw --samples with a "
                         "warm start above the input's noise (sampling.warm_start_factor > 1)")
    return best


def calibrate_uncertainty(module: DiffusionModule, scans: Sequence[Scan], doses: Sequence[float],
                          samples: int = 3, coverage: float = 0.95, max_slices: int = 4, seed: int = 0
                          ) -> dict[str, Any]:
    """Fit ``conformal_band`` on full-dose CT ``scans`` with low dose simulated at ``doses`` (relative to each
    scan's own noise), denoised as ``cdm4mi denoise --samples`` does. At most ``max_slices`` slices per scan
    (evenly spaced). Returns the card entry ``denoise_volume`` applies."""
    if samples < 2:
        raise ValueError(f"calibration: needs samples >= 2 (a spread), got {samples}")
    if not scans:
        raise ValueError("calibration: no scans to calibrate on")
    errors, spreads, noises = [], [], []
    for index, scan in enumerate(scans):
        picks = np.unique(np.linspace(0, scan.array.shape[0] - 1, min(max_slices, scan.array.shape[0])).round())
        truth = scan.array[picks.astype(int)].astype(np.float32)
        mask = body_mask(truth)
        for d, dose in enumerate(doses):
            low, _ = simulate_relative_dose(truth, scan.spacing_mm[1:], dose, seed=seed + 100 * index + d)
            low_scan = dataclasses.replace(scan, array=low)
            # unadapted (sampling.adapt_steps): adapting to a scan the model trained on teaches it nothing, and the
            # benchmark measures the coverage of adapted draws on held-out scans
            result = denoise_scan(module, low_scan, samples=samples, seed=seed + d, progress=False, calibrated=False,
                                  adapt_steps=0)
            errors.append(np.abs(result.mean - truth)[mask])
            spreads.append(result.std[mask])
            noises.append(np.full(int(mask.sum()), result.input_noise_scan, dtype=np.float32))
    band = conformal_band(np.concatenate(errors), np.concatenate(spreads), np.concatenate(noises), coverage)
    return {"coverage": coverage, "offset": band["offset"], "scale": band["scale"], "samples": samples,
            "scans": len(scans), "doses": [float(d) for d in doses]}


def calibration_doses(data: dict[str, Any]) -> list[float]:
    """The doses a recipe trains on: the ends and the geometric middle of ``data.dose_augmentation``'s range,
    else quarter dose."""
    options = data.get("dose_augmentation")
    if not options:
        return [0.25]
    low, high = DoseAugmentation.from_options(options).dose_range
    return [low, math.sqrt(low * high), high]


def calibrate_checkpoint(path: str | Path, coverage: float, samples: int = 3, seed: int = 0) -> dict[str, Any] | None:
    """Calibrate the model of a ``cdm4mi train`` checkpoint on its own cohort (validation patients, else
    training patients: full-dose scans, simulated low dose) and store the result in its card. None (nothing
    stored) for a model that is not a CT denoiser."""
    module = load_module(path)
    data = module.config.data
    if module.task != "denoise":
        return None
    manifest = load_manifest(data["manifest"], root=data.get("root"))
    if manifest.modality != "CT":
        return None
    entries = manifest.patients_in("val") or manifest.patients_in("train")
    scans = [load_scan(manifest.target_path(entry), modality="CT") for entry in entries]
    calibration = calibrate_uncertainty(module, scans, calibration_doses(data), samples, coverage, seed=seed)
    calibration["split"] = "val" if manifest.patients_in("val") else "train"
    store_card_entry(path, "uncertainty", calibration)
    return calibration


def describe_calibration(calibration: dict[str, Any]) -> str:
    """One line for a person: what the calibrated band means and where it comes from."""
    doses = ", ".join(f"{d:.0%}" for d in calibration["doses"])
    caveat = " (training patients: optimistic on new ones)" if calibration.get("split") == "train" else ""
    return (f"uncertainty: mean ± 2 std covers {calibration['coverage']:.0%} of body voxels of the full-dose truth on "
            f"{calibration['scans']} {calibration.get('split', 'calibration')} scan(s) at {doses} dose{caveat}; "
            f"std = {calibration['scale']:.2f} x (spread of {calibration['samples']} draws + "
            f"{calibration['offset']:g} x input noise)")
