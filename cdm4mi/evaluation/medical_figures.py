"""Figures for CT denoising results: a slice comparison and per-patient metric plots.

Images are drawn in a stated display window (default soft tissue [-160, 240] HU); error and
uncertainty maps carry HU colour bars. Titles and labels show only what the caller passes
(pseudonymous patient ids), nothing read from image headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cdm4mi.evaluation.figures import save_png  # noqa: E402
from cdm4mi.evaluation.metrics import SOFT_TISSUE_HU_WINDOW, check_hu_window  # noqa: E402
from cdm4mi.evaluation.statistics import summarize  # noqa: E402

_METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "rmse_hu": "RMSE (HU)", "mae_hu": "MAE (HU)",
                  "noise_hu": "noise in uniform ROIs (HU SD)", "bias_hu": "HU bias in uniform ROIs (HU)",
                  "lesion_contrast_kept": "lesion contrast kept (fraction)"}


def save_slice_comparison(input_hu: np.ndarray, output_hu: np.ndarray, target_hu: np.ndarray, path: str | Path,
                          window: tuple[float, float] = SOFT_TISSUE_HU_WINDOW, uncertainty_hu: np.ndarray | None = None,
                          title: str = "", error_max_hu: float | None = None, overwrite: bool = False) -> Path:
    """One PNG of a slice [H, W] in HU: low-dose input, model output, full-dose target, |output − target|,
    and the per-pixel SD of the model's samples (``uncertainty_hu``) when given.

    The three images share the display ``window`` (HU). The error map's colour bar runs from 0 to
    ``error_max_hu`` (default: the 99.5th percentile of the error, so a few outliers do not wash it
    out; pass a number to compare figures). Written atomically; refuses to replace ``path`` unless ``overwrite``.
    """
    low, high = check_hu_window(window)
    images = [np.asarray(image, dtype=np.float64) for image in (input_hu, output_hu, target_hu)]
    if uncertainty_hu is not None:
        images.append(np.asarray(uncertainty_hu, dtype=np.float64))
    if any(image.ndim != 2 for image in images) or len({image.shape for image in images}) != 1:
        raise ValueError(f"save_slice_comparison: need 2D slices of one shape, got {[image.shape for image in images]}")
    error = np.abs(images[1] - images[2])
    error_max = float(error_max_hu) if error_max_hu is not None else max(float(np.percentile(error, 99.5)), 1.0)

    panels = [("low-dose input", images[0], "gray", (low, high), None),
              ("model output", images[1], "gray", (low, high), None),
              ("full-dose target", images[2], "gray", (low, high), None),
              ("|output − target|", error, "magma", (0.0, error_max), "HU")]
    if uncertainty_hu is not None:
        spread = images[3]
        panels.append(("uncertainty (SD of samples)", spread, "viridis",
                       (0.0, max(float(np.percentile(spread, 99.5)), 1e-6)), "HU"))
    height, width = images[0].shape
    panel_inches = 3.2
    figure, axes = plt.subplots(1, len(panels), figsize=(panel_inches * len(panels), panel_inches * height / width + 0.5),
                                squeeze=False, layout="constrained")
    for axis, (label, image, colormap, (vmin, vmax), unit) in zip(axes[0], panels):
        shown = axis.imshow(image, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axis.set_title(label, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        if unit:
            colorbar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
            colorbar.set_label(unit, fontsize=9)
            colorbar.ax.tick_params(labelsize=8)
    heading = f"display window [{low:g}, {high:g}] HU"
    figure.suptitle(f"{title} — {heading}" if title else heading, fontsize=11)
    return save_png(figure, path, overwrite)


def save_patient_metric_plot(summary_or_rows: dict | Sequence[dict], path: str | Path, metric: str = "psnr",
                             methods: Sequence[str] | None = None, title: str = "", overwrite: bool = False) -> Path:
    """Per-patient values of ``metric`` for each method, one line per patient across methods, with
    each method's mean over patients and its 95% bootstrap CI.

    Takes a ``statistics.summarize`` result (its ``per_patient`` values and ``ci95``), the document
    ``report.write_summary_json`` writes (``{"hu_window", ..., "summary"}``), or the metric rows
    themselves (summarized here, without tests). The HU window is in the title when the input
    states it. Written atomically; refuses to replace ``path`` unless ``overwrite``.
    """
    window_note = ""
    if isinstance(summary_or_rows, dict):
        summary = summary_or_rows.get("summary", summary_or_rows)
        if "hu_window" in summary_or_rows:
            low, high = summary_or_rows["hu_window"]
            window_note = f"HU window [{low:g}, {high:g}]"
    else:
        rows = list(summary_or_rows)
        summary = summarize(rows, metrics=(metric,), methods=methods, reference_method=None)
        windows = {(row.get("window_low"), row.get("window_high")) for row in rows}
        if len(windows) == 1 and None not in next(iter(windows)):
            low, high = windows.pop()
            window_note = f"HU window [{low:g}, {high:g}]"
    methods = list(summary["methods"]) if methods is None else list(methods)
    unknown = [method for method in methods
               if method not in summary["methods"] or metric not in summary["methods"][method]]
    if unknown:
        raise ValueError(f"save_patient_metric_plot: no {metric!r} values for methods {unknown}")
    stats = [summary["methods"][method][metric] for method in methods]
    patients = list(dict.fromkeys(patient for stat in stats for patient in stat["per_patient"]))

    figure, axis = plt.subplots(figsize=(max(4.5, 1.5 * len(methods) + 2.5), 4.2), layout="constrained")
    positions = np.arange(len(methods))
    colors = plt.get_cmap("tab10" if len(patients) <= 10 else "viridis")
    for index, patient in enumerate(patients):
        values = [stat["per_patient"].get(patient, np.nan) for stat in stats]
        color = colors(index % 10) if len(patients) <= 10 else colors(index / max(len(patients) - 1, 1))
        axis.plot(positions, values, "-o", color=color, alpha=0.6, linewidth=1, markersize=4,
                  label=patient if len(patients) <= 10 else None)
    for position, stat in zip(positions, stats):
        if stat["mean"] is None:
            continue
        ci = stat["ci95"]
        axis.hlines(stat["mean"], position - 0.25, position + 0.25, color="black", linewidth=2.5, zorder=3)
        if ci is not None:
            axis.vlines(position, ci[0], ci[1], color="black", linewidth=1.5, zorder=3)
    axis.set_xticks(positions, methods, rotation=20 if max(len(method) for method in methods) > 10 else 0)
    axis.set_xlim(-0.5, len(methods) - 0.5)
    axis.set_ylabel(_METRIC_LABELS.get(metric, metric))
    axis.grid(axis="y", alpha=0.3)
    if len(patients) <= 10:
        axis.legend(title="patient", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    parts = [part for part in (title, window_note, f"{len(patients)} patients; bar: mean, line: 95% CI") if part]
    axis.set_title("\n".join([" — ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0], fontsize=10)
    return save_png(figure, path, overwrite)



def save_methods_with_lesions(images_hu: dict[str, np.ndarray], lesions: Sequence, pixel_mm: float, path: str | Path,
                              window: tuple[float, float] = SOFT_TISSUE_HU_WINDOW, title: str = "",
                              overwrite: bool = False) -> Path:
    """One PNG row of a slice [H, W] (HU) per method ("full dose", "low-dose input", "gaussian", "model"...),
    in one display ``window``, with each inserted lesion (``cdm4mi.evaluation.observers.Lesion``: row, col,
    diameter_mm; ``pixel_mm`` the pixel size) circled in every panel, so a reader sees which method keeps
    which lesion."""
    low, high = check_hu_window(window)
    shapes = {np.shape(image) for image in images_hu.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"save_methods_with_lesions: need 2D slices of one shape, got {sorted(shapes)}")
    height, width = next(iter(shapes))
    panel_inches = 3.2
    figure, axes = plt.subplots(1, len(images_hu), squeeze=False, layout="constrained",
                                figsize=(panel_inches * len(images_hu), panel_inches * height / width + 0.5))
    for axis, (label, image) in zip(axes[0], images_hu.items()):
        axis.imshow(np.asarray(image, dtype=np.float64), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        for lesion in lesions:
            radius_px = lesion.diameter_mm / 2 / pixel_mm
            axis.add_patch(plt.Circle((lesion.col, lesion.row), radius_px + 3, fill=False, color="#ffb000",
                                      linewidth=0.7))
        axis.set_title(label, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    heading = f"display window [{low:g}, {high:g}] HU; circles: inserted lesions"
    figure.suptitle(f"{title} — {heading}" if title else heading, fontsize=11)
    return save_png(figure, path, overwrite)
