"""Write evaluation results: per-slice CSV, summary JSON and a plain-text per-patient table.

Every output states the HU window and data_range its numbers were computed in. Files are written
through ``atomic_output``: a reader never sees half a file, and an existing file is kept unless
``overwrite``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cdm4mi.atomic import atomic_output
from cdm4mi.evaluation.metrics import METRICS, check_hu_window
from cdm4mi.evaluation.statistics import finite_or_none, summarize

CSV_COLUMNS = ("patient_id", "slice_index", "method", "psnr", "ssim", "rmse_hu", "mae_hu",
               "window_low", "window_high", "data_range")
_CSV_FORMATS = {"psnr": "{:.4f}", "ssim": "{:.6f}", "rmse_hu": "{:.4f}", "mae_hu": "{:.4f}",
                "window_low": "{:g}", "window_high": "{:g}", "data_range": "{:g}",
                "noise_hu": "{:.4f}", "bias_hu": "{:.4f}", "nps_peak_per_mm": "{:.5f}",
                "nps_peak_shift_per_mm": "{:.5f}", "nps_mean_per_mm": "{:.5f}", "mtf50_per_mm": "{:.5f}",
                "lesion_contrast_kept": "{:.4f}"}
_LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "rmse_hu": "RMSE HU", "mae_hu": "MAE HU",
           "noise_hu": "noise HU", "bias_hu": "bias HU", "nps_peak_per_mm": "NPS peak /mm",
           "nps_peak_shift_per_mm": "peak shift /mm", "mtf50_per_mm": "MTF50 /mm",
           "lesion_contrast_kept": "lesion contrast kept"}
_TABLE_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "rmse_hu": "{:.2f}", "mae_hu": "{:.2f}",
                  "noise_hu": "{:.1f}", "bias_hu": "{:.1f}", "nps_peak_per_mm": "{:.3f}",
                  "nps_peak_shift_per_mm": "{:.3f}", "mtf50_per_mm": "{:.3f}", "lesion_contrast_kept": "{:.2f}"}


def write_metrics_csv(rows: Sequence[dict], path: str | Path, overwrite: bool = False,
                      columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """One line per row (patient, slice, method) with the ``columns``; ``None`` is an empty cell.

    PSNR, RMSE and MAE have 4 decimals, SSIM 6; other row keys are not written.
    """
    for row in rows:
        missing = [column for column in columns if column not in row]
        if missing:
            raise ValueError(f"write_metrics_csv: a row of patient {row.get('patient_id')!r} lacks {missing}")
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_csv_cell(column, row[column]) for column in columns])
    return Path(path)


def _csv_cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if column in _CSV_FORMATS:
        return _CSV_FORMATS[column].format(float(value))
    return str(value)


def write_summary_json(summary: dict, path: str | Path, window: tuple[float, float], data_range: float,
                       extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``{"hu_window": [low, high], "data_range": ..., **extra, "summary": summary}`` as strict JSON.

    NaN and ±inf become ``null`` (strict JSON has neither). ``data_range`` must equal high − low.
    ``extra`` holds run facts (checkpoint, dose fraction, sampling steps, ...) and may not reuse
    the three top-level keys.
    """
    low, high = check_hu_window(window)
    if not math.isclose(float(data_range), high - low):
        raise ValueError(f"data_range: {data_range} differs from the window width {high - low} of [{low:g}, {high:g}] HU")
    extra = dict(extra or {})
    clashes = sorted({"hu_window", "data_range", "summary"} & set(extra))
    if clashes:
        raise ValueError(f"write_summary_json: extra may not set {clashes}")
    document = {"hu_window": [low, high], "data_range": float(data_range), **extra, "summary": summary}
    text = json.dumps(finite_or_none(_plain(document)), indent=2, allow_nan=False)
    with atomic_output(path, overwrite=overwrite) as temporary:
        temporary.write_text(text + "\n")
    return Path(path)


def _plain(value):
    """Paths and numpy arrays to JSON-ready values; everything else as is."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def format_patient_table(rows: Sequence[dict], methods: Sequence[str] | None = None,
                         metrics: Sequence[str] = METRICS, summary: dict | None = None,
                         n_bootstrap: int = 10000, seed: int = 0, heading: str | None = None) -> str:
    """Plain-text table: per-patient means per (patient, method), then mean ± SD and 95% CI per method.

    When ``summary`` (from ``statistics.summarize``) has comparisons, adds one line per baseline with
    the mean paired difference (reference − baseline) and the Wilcoxon p of each metric. Without
    ``summary`` it is computed with no tests. Rows must carry one HU window, which heads the table, unless
    a ``heading`` (for measures taken outside any window) replaces it.
    """
    rows = list(rows)
    window = _single_window(rows) if heading is None else None
    methods = list(dict.fromkeys(row["method"] for row in rows)) if methods is None else list(methods)
    if summary is None:
        summary = summarize(rows, metrics=metrics, methods=methods, reference_method=None,
                            n_bootstrap=n_bootstrap, seed=seed)
    patients = list(dict.fromkeys(str(row["patient_id"]) for row in rows))
    labels = [_LABELS.get(metric, metric) for metric in metrics]

    def number(metric: str, value) -> str:
        return "n/a" if value is None else _TABLE_FORMATS.get(metric, "{:.4g}").format(value)

    table: list[list[str]] = [["patient_id", "method", *labels]]
    for patient in patients:
        for method in methods:
            means = [summary["methods"][method][metric]["per_patient"].get(patient) for metric in metrics]
            if all(value is None for value in means):
                continue
            table.append([patient, method, *(number(metric, value) for metric, value in zip(metrics, means))])
    rule = len(table)
    for method in methods:
        stats = [summary["methods"][method][metric] for metric in metrics]
        table.append(["mean ± SD", method, *(
            f"{number(metric, stat['mean'])} ± {number(metric, stat['sd'])}" if stat["sd"] is not None
            else number(metric, stat["mean"]) for metric, stat in zip(metrics, stats))])
        table.append(["95% CI", "", *(
            f"[{number(metric, stat['ci95'][0])}, {number(metric, stat['ci95'][1])}]" if stat["ci95"] else "n/a"
            for metric, stat in zip(metrics, stats))])
    comparisons = summary.get("comparisons") or {}
    reference = summary.get("reference_method")
    for baseline, by_metric in comparisons.items():
        cells = []
        for metric in metrics:
            test = by_metric[metric]
            difference = "n/a" if test["mean_difference"] is None else (
                ("+" if test["mean_difference"] >= 0 else "") + number(metric, test["mean_difference"]))
            cells.append(f"{difference} {_p_text(test['p_value'])}")
        table.append([f"{reference} −", baseline, *cells])

    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = []
    for index, line in enumerate(table):
        if index in (1, rule):
            lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
        text = "  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                         for column, (cell, width) in enumerate(zip(line, widths)))
        lines.append(text.rstrip())
    if window is None:
        head = f"{heading}\n{len(patients)} patient(s)"
    else:
        low, high, data_range = window
        masked = {bool(row.get("masked", False)) for row in rows}
        region = {frozenset([True]): "pixels inside the mask", frozenset([False]): "whole slices"}.get(
            frozenset(masked), "some slices masked, some whole")
        head = (f"HU window [{low:g}, {high:g}], data_range {data_range:g}; scored on {region}\n"
                f"{len(patients)} patient(s); values are per-patient means over slices")
    foot = [f"95% CI: percentile bootstrap over patients ({summary['n_bootstrap']} resamples, seed {summary['seed']})"]
    notes = {summary["methods"][method][metric]["ci_note"] for method in methods for metric in metrics}
    foot += [f"note: {note}" for note in sorted(note for note in notes if note)]
    if comparisons:
        tests = [test for by_metric in comparisons.values() for test in by_metric.values()]
        n_paired = ", ".join(str(n) for n in sorted({test["n"] for test in tests}))
        smallest = min((test["min_attainable_p"] for test in tests if test["min_attainable_p"] is not None), default=None)
        foot.append(f"{reference} − baseline: mean paired difference of per-patient means")
        foot.append(f"p: two-sided Wilcoxon signed-rank over {n_paired} paired patients"
                    + (f" (smallest attainable p {smallest:.2g})" if smallest is not None else ""))
    return "\n".join([head, *lines, *foot])


def _p_text(p_value) -> str:
    if p_value is None:
        return "(p n/a)"
    return "(p<0.001)" if p_value < 0.001 else f"(p={p_value:.3f})"


def _single_window(rows: Sequence[dict]) -> tuple[float, float, float]:
    windows = set()
    for row in rows:
        try:
            windows.add((float(row["window_low"]), float(row["window_high"]), float(row["data_range"])))
        except KeyError as error:
            raise ValueError(f"rows must state their HU window: a row lacks {error.args[0]!r}") from None
    if len(windows) != 1:
        raise ValueError(f"rows must share one HU window to be tabled together, found {sorted(windows) or 'none'}")
    return windows.pop()
