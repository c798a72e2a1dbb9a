"""Held-out evaluation: denoise every patient of a split and score it against the full-dose target,
beside the classical baselines (the low-dose input itself, a Gaussian filter, non-local means).

CT patients also get the physicist's measures (``physics``: noise, HU bias, NPS, MTF50) and, with a
``LesionStudy``, low-contrast detectability: the same disks added to the full and the low dose, every method
run again on the low dose with lesions, its images read at the lesions and at the same places without them.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cdm4mi.cohort.discover import check_pair
from cdm4mi.cohort.manifest import Manifest
from cdm4mi.evaluation.baselines import gaussian_filter_baseline, low_dose_input, nlm_baseline
from cdm4mi.evaluation.detectability import LesionStudy, contrast_kept, insert_volume_lesions, lesion_rois, pool_rois
from cdm4mi.evaluation.medical_figures import save_patient_metric_plot, save_slice_comparison
from cdm4mi.evaluation.metrics import body_mask, evaluate_patient
from cdm4mi.evaluation.physics import FULL_DOSE, PatientPhysics, physicist_measures
from cdm4mi.evaluation.physics_report import write_physics_report
from cdm4mi.evaluation.report import format_patient_table, write_metrics_csv, write_summary_json
from cdm4mi.evaluation.statistics import summarize
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.inference.predict import predict_patients
from cdm4mi.io.read import load_scan
from cdm4mi.training.module import DiffusionModule

METHODS = ("model", "low_dose_input", "gaussian", "nlm")


@dataclass
class PatientScore:
    """One patient's part of a held-out evaluation: its metric rows and what its figure shows (small, so that
    the processes of a distributed evaluation can send it to rank 0)."""

    patient_id: str
    rows: list[dict]
    t_start: int
    slice_index: int  # the representative slice, drawn in the figure
    low_hu: np.ndarray  # [H, W] of that slice: input, model output, target, and the samples' SD (or None)
    model_hu: np.ndarray
    target_hu: np.ndarray
    uncertainty_hu: np.ndarray | None
    physics: PatientPhysics | None = None  # CT only
    lesion_rois: dict | None = None  # with a LesionStudy: detectability.lesion_rois of this patient
    nlm_blend: float = 0.0  # the share of NLM of the input in the model's output (sampling.nlm_blend)


@dataclass
class HeldOutResult:
    rows: list[dict] = field(default_factory=list)  # one per (patient, slice, method)
    figures: list[Path] = field(default_factory=list)
    warm_starts: dict[str, int] = field(default_factory=dict)  # patient -> t_start used
    scores: list[PatientScore] = field(default_factory=list)  # per patient, with what its figure shows

    @property
    def nlm_blend(self) -> float:
        """The share of NLM of the input in the "model" outputs (``sampling.nlm_blend``; one per run)."""
        return max((score.nlm_blend for score in self.scores), default=0.0)


def representative_slice(target_hu: np.ndarray) -> int:
    """The slice with the most body (tissue above -500 HU): where differences are easiest to see."""
    return int((target_hu > -500).reshape(len(target_hu), -1).sum(axis=1).argmax())


@dataclass
class PatientScorer:
    """Denoises patient ``index`` of ``patients`` and scores it and the baselines (a ``predict_patients`` task)."""

    manifest: Manifest
    patients: list
    window: tuple[float, float] = (-1000.0, 1000.0)
    use_body_mask: bool = False
    denoise_options: dict[str, Any] | None = None
    physics: bool = True  # the physicist's measures, for CT manifests
    lesions: LesionStudy | None = None  # low-contrast detectability (CT)

    def __call__(self, module: DiffusionModule, index: int) -> PatientScore:
        entry, manifest = self.patients[index], self.manifest
        low = load_scan(manifest.input_path(entry))
        full = load_scan(manifest.target_path(entry))
        check_pair(low, full, f"{manifest.path}: patient {entry.patient_id}")
        # The manifest's metadata (dose fraction...) is what the model was trained with for this patient.
        options = {"metadata": entry.metadata, **(self.denoise_options or {})}
        denoised = denoise_scan(module, low, progress=False, **options)
        outputs = method_outputs(denoised.mean, low.array)
        mask = body_mask(full.array) if self.use_body_mask else None
        rows = evaluate_patient(entry.patient_id, outputs, full.array, window=self.window, mask=mask)
        k = representative_slice(full.array)
        score = PatientScore(entry.patient_id, rows, denoised.t_start, k, low.array[k], denoised.mean[k],
                             full.array[k], None if denoised.std is None else denoised.std[k],
                             nlm_blend=denoised.nlm_blend)
        if manifest.modality == "CT" and (self.physics or self.lesions is not None):
            score.physics = physicist_measures(entry.patient_id, outputs, full.array, full.spacing_mm[1:])
            if self.lesions is not None:
                score.lesion_rois = self.lesion_pass(module, low, full, outputs, options, score.physics)
        return score

    def lesion_pass(self, module: DiffusionModule, low, full, outputs: dict[str, np.ndarray], options: dict,
                    physics: PatientPhysics) -> dict:
        """Insert the study's lesions into the full dose and (the same disks) into the low dose, run every method
        on the low dose with lesions; returns the lesion ROIs and adds each method's contrast kept to ``physics``."""
        study, pixel = self.lesions, float(min(full.spacing_mm[1:]))
        rng = np.random.default_rng([study.seed, zlib.crc32(physics.rows[0]["patient_id"].encode())])
        reference, lesions = insert_volume_lesions(full.array, pixel, study.diameters_mm, study.contrasts_hu,
                                                   study.per_class, rng, study.slices(len(full.array)))
        # Image-domain insertion: at these contrasts the lesion barely changes the quantum noise around it.
        low_lesions = dataclasses.replace(low, array=(low.array + (reference - full.array)).astype(low.array.dtype))
        denoised = denoise_scan(module, low_lesions, progress=False, **options)  # same seed: same sampling noise
        with_lesions = {FULL_DOSE: reference, **method_outputs(denoised.mean, low_lesions.array)}
        without = {FULL_DOSE: full.array, **outputs}
        for row in physics.rows:
            row["lesion_contrast_kept"] = contrast_kept(with_lesions[row["method"]], without[row["method"]],
                                                        lesions, pixel)
        return lesion_rois(full.array, lesions, pixel, {m: [v] for m, v in with_lesions.items()}, study.seed,
                           absent_outputs={m: [v] for m, v in without.items()})


def method_outputs(model_hu: np.ndarray, low_hu: np.ndarray) -> dict[str, np.ndarray]:
    """The model's output and the baselines run on the low dose ``low_hu``, by method name (``METHODS``)."""
    return {"model": model_hu, "low_dose_input": low_dose_input(low_hu), "gaussian": gaussian_filter_baseline(low_hu),
            "nlm": nlm_baseline(low_hu)}


def evaluate_heldout(
    module: DiffusionModule,
    manifest: Manifest,
    split: str = "test",
    window: tuple[float, float] = (-1000.0, 1000.0),
    use_body_mask: bool = False,
    figures_dir: Path | None = None,
    denoise_options: dict[str, Any] | None = None,
    progress: bool = True,
    processes: dict[str, Any] | None = None,
    physics: bool = True,
    lesions: LesionStudy | None = None,
) -> HeldOutResult | None:
    """Score the model and the baselines on every patient of ``split`` (per slice, in the HU ``window``).

    CT manifests also get the physicist's measures (unless not ``physics``) and, with ``lesions``, lesion
    detectability (``PatientScorer``). ``processes`` (``predict_patients``'s options: ``device``, ``devices``,
    ``num_nodes``, ``strategy``, ``prepare``) spreads the patients over processes with Lightning; then only
    global rank 0 gets the result (and draws the figures), the other processes None."""
    patients = manifest.patients_in(split)
    if not patients:
        raise ValueError(f"--split: the manifest {manifest.path} has no '{split}' patients")
    scorer = PatientScorer(manifest, patients, window, use_body_mask, denoise_options, physics, lesions)
    if processes is None:
        scores = []
        # closed (its line ended) before an error propagates, so the error's line stands alone
        with tqdm(total=len(patients), desc=f"evaluating {split}", unit="patient", disable=not progress) as bar:
            for index in range(len(patients)):
                scores.append(scorer(module, index))
                bar.update()
    else:
        run = predict_patients(module, scorer, len(patients), errors=(ValueError, OSError), **processes)
        scores = run.results()  # the first patient that failed, raised on every process
        if not run.is_global_zero:
            return None
    result = HeldOutResult(scores=scores)
    for score in scores:
        result.rows += score.rows
        result.warm_starts[score.patient_id] = score.t_start
    if figures_dir is not None:
        save_figures(result, figures_dir, window)
    return result


def save_figures(result: HeldOutResult, figures_dir: Path, window: tuple[float, float]) -> None:
    """A figure per patient of ``result`` (``save_patient_figure``), listed in ``result.figures``."""
    result.figures += [save_patient_figure(score, figures_dir, window) for score in result.scores]


def save_patient_figure(score: PatientScore, figures_dir: Path, window: tuple[float, float]) -> Path:
    """``<patient>_slice<k>.png``: input, model output, target and error (and SD) of the representative slice."""
    k = score.slice_index
    model_psnr = next(r["psnr"] for r in score.rows if r["method"] == "model" and r["slice_index"] == k)
    psnr_text = "n/a" if model_psnr is None else f"{model_psnr:.2f} dB"
    title = f"{score.patient_id} slice {k}: model PSNR {psnr_text} in [{window[0]:g}, {window[1]:g}] HU"
    return save_slice_comparison(score.low_hu, score.model_hu, score.target_hu,
                                 figures_dir / f"{score.patient_id}_slice{k:03d}.png",
                                 uncertainty_hu=score.uncertainty_hu, title=title, overwrite=True)


@dataclass
class WrittenReport:
    table: str  # the per-patient tables (PSNR/SSIM..., then the physicist's), for printing
    summary: dict
    files: list[Path]  # metrics.csv, summary.json, then the figures
    physics: dict | None = None  # summary.json's "physics"


def write_heldout_report(result: HeldOutResult, out: Path, window: tuple[float, float], split_label: str,
                         body_mask_used: bool = False, seed: int = 0) -> WrittenReport:
    """metrics.csv (per slice), summary.json (per patient, CIs, tests) and per-patient plots in ``out``; with
    the physicist's measures also physics.csv and a figure per measure (``physics_report``)."""
    data_range = window[1] - window[0]
    summary = summarize(result.rows, methods=METHODS, reference_method="model", seed=seed)
    files = [write_metrics_csv(result.rows, out / "metrics.csv", overwrite=True)]
    extra = {"split": split_label, "body_mask": body_mask_used, "warm_start_timesteps": result.warm_starts,
             "model_nlm_blend": result.nlm_blend}
    table = format_patient_table(result.rows, methods=METHODS, summary=summary)
    measured = [score.physics for score in result.scores if score.physics is not None]
    physics = None
    if measured:
        pooled: dict = {}
        for score in result.scores:
            pool_rois(pooled, score.lesion_rois or {})
        physics = write_physics_report(measured, pooled, out, METHODS, seed)
        extra["physics"] = physics.summary
        table += "\n\n" + physics.table
    files.append(write_summary_json(summary, out / "summary.json", window, data_range, extra=extra, overwrite=True))
    files += [save_patient_metric_plot(summary, out / f"per_patient_{metric}.png", metric=metric, overwrite=True)
              for metric in ("psnr", "ssim")]
    files += [] if physics is None else physics.files
    return WrittenReport(table, summary, files + result.figures, None if physics is None else physics.summary)
