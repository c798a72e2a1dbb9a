"""Held-out evaluation: denoise every patient of a split and score it against the full-dose target,
beside the classical baselines (the low-dose input itself, a Gaussian filter, non-local means)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cdm4mi.cohort.discover import check_pair
from cdm4mi.cohort.manifest import Manifest
from cdm4mi.evaluation.baselines import gaussian_filter_baseline, low_dose_input, nlm_baseline
from cdm4mi.evaluation.medical_figures import save_patient_metric_plot, save_slice_comparison
from cdm4mi.evaluation.metrics import body_mask, evaluate_patient
from cdm4mi.evaluation.report import format_patient_table, write_metrics_csv, write_summary_json
from cdm4mi.evaluation.statistics import summarize
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import load_scan
from cdm4mi.training.module import DiffusionModule

METHODS = ("model", "low_dose_input", "gaussian", "nlm")


@dataclass
class HeldOutResult:
    rows: list[dict] = field(default_factory=list)  # one per (patient, slice, method)
    figures: list[Path] = field(default_factory=list)
    warm_starts: dict[str, int] = field(default_factory=dict)  # patient -> t_start used


def representative_slice(target_hu: np.ndarray) -> int:
    """The slice with the most body (tissue above -500 HU): where differences are easiest to see."""
    return int((target_hu > -500).reshape(len(target_hu), -1).sum(axis=1).argmax())


def evaluate_heldout(
    module: DiffusionModule,
    manifest: Manifest,
    split: str = "test",
    window: tuple[float, float] = (-1000.0, 1000.0),
    use_body_mask: bool = False,
    figures_dir: Path | None = None,
    denoise_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> HeldOutResult:
    """Score the model and the baselines on every patient of ``split`` (per slice, in the HU ``window``)."""
    patients = manifest.patients_in(split)
    if not patients:
        raise ValueError(f"--split: the manifest {manifest.path} has no '{split}' patients")
    result = HeldOutResult()
    for entry in tqdm(patients, desc=f"evaluating {split}", unit="patient", disable=not progress):
        low = load_scan(manifest.input_path(entry))
        full = load_scan(manifest.target_path(entry))
        check_pair(low, full, f"{manifest.path}: patient {entry.patient_id}")
        # The manifest's metadata (dose fraction...) is what the model was trained with for this patient.
        options = {"metadata": entry.metadata, **(denoise_options or {})}
        denoised = denoise_scan(module, low, progress=False, **options)
        result.warm_starts[entry.patient_id] = denoised.t_start
        outputs = {"model": denoised.mean, "low_dose_input": low_dose_input(low.array),
                   "gaussian": gaussian_filter_baseline(low.array), "nlm": nlm_baseline(low.array)}
        mask = body_mask(full.array) if use_body_mask else None
        rows = evaluate_patient(entry.patient_id, outputs, full.array, window=window, mask=mask)
        result.rows += rows
        if figures_dir is not None:
            k = representative_slice(full.array)
            model_psnr = next(r["psnr"] for r in rows if r["method"] == "model" and r["slice_index"] == k)
            uncertainty = None if denoised.std is None else denoised.std[k]
            path = figures_dir / f"{entry.patient_id}_slice{k:03d}.png"
            psnr_text = "n/a" if model_psnr is None else f"{model_psnr:.2f} dB"
            title = f"{entry.patient_id} slice {k}: model PSNR {psnr_text} in [{window[0]:g}, {window[1]:g}] HU"
            result.figures.append(save_slice_comparison(low.array[k], denoised.mean[k], full.array[k], path,
                                                        uncertainty_hu=uncertainty, title=title, overwrite=True))
    return result


@dataclass
class WrittenReport:
    table: str  # the per-patient table, for printing
    summary: dict
    files: list[Path]  # metrics.csv, summary.json, then the figures


def write_heldout_report(result: HeldOutResult, out: Path, window: tuple[float, float], split_label: str,
                         body_mask_used: bool = False, seed: int = 0) -> WrittenReport:
    """metrics.csv (per slice), summary.json (per patient, CIs, tests) and per-patient plots in ``out``."""
    data_range = window[1] - window[0]
    summary = summarize(result.rows, methods=METHODS, reference_method="model", seed=seed)
    files = [write_metrics_csv(result.rows, out / "metrics.csv", overwrite=True)]
    extra = {"split": split_label, "body_mask": body_mask_used, "warm_start_timesteps": result.warm_starts}
    files.append(write_summary_json(summary, out / "summary.json", window, data_range, extra=extra, overwrite=True))
    files += [save_patient_metric_plot(summary, out / f"per_patient_{metric}.png", metric=metric, overwrite=True)
              for metric in ("psnr", "ssim")]
    return WrittenReport(format_patient_table(result.rows, methods=METHODS, summary=summary), summary,
                         files + result.figures)
