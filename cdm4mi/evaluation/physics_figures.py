"""Figures of the physicist's measures: NPS and MTF curves per method, lesion detectability per class.

Curves are averaged over patients on a common frequency axis (0 to the smallest patient's Nyquist frequency),
with each patient's curve drawn thin behind the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cdm4mi.evaluation.figures import save_png  # noqa: E402
from cdm4mi.evaluation.physics import INPUT_METHOD, PatientPhysics  # noqa: E402

_POINTS = 60


def method_color(method: str, methods: Sequence[str]):
    """One colour per method, the same in every figure: by its place in ``methods`` (the report's order)."""
    return plt.get_cmap("tab10")(list(methods).index(method) % 10 if method in methods else 9)


def _line_style(method: str) -> dict:
    """The low-dose input dashed and on top: methods that leave it as it is hide behind it otherwise."""
    return {"linewidth": 2, "linestyle": "--", "zorder": 4} if method == INPUT_METHOD else {"linewidth": 2}


def save_nps_figure(patients: Sequence[PatientPhysics], path: str | Path, methods: Sequence[str],
                    overwrite: bool = False) -> Path:
    """NPS of (method − full dose) in uniform ROIs: absolute (HU² mm², log scale) and normalized to its peak."""
    order = methods
    methods = [method for method in methods if any(method in patient.nps for patient in patients)]
    top = min(patient.nps[m].frequency_per_mm[-1] for patient in patients for m in patient.nps)
    grid = np.linspace(0, top, _POINTS)
    figure, (absolute, shape) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for method in methods:
        color = method_color(method, order)
        curves = np.array([np.interp(grid, p.nps[method].frequency_per_mm, p.nps[method].nps)
                           for p in patients if method in p.nps])
        for curve in curves:
            absolute.plot(grid[1:], curve[1:], color=color, alpha=0.25, linewidth=0.8)
        mean, style = curves.mean(axis=0), _line_style(method)
        absolute.plot(grid[1:], mean[1:], color=color, label=method, **style)
        shape.plot(grid[1:], mean[1:] / max(mean[1:].max(), np.finfo(float).tiny), color=color, label=method, **style)
    absolute.set_yscale("log")
    absolute.set_ylabel("NPS (HU² mm²)")
    shape.set_ylabel("NPS / its peak")
    for axis, title in ((absolute, "noise power of method − full dose"), (shape, "noise texture (peak shifts down = blur)")):
        axis.set_xlabel("spatial frequency (cycles/mm)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    shape.legend(fontsize=8)
    figure.suptitle(f"Noise power spectrum in uniform ROIs, {len(patients)} patient(s); thin: per patient", fontsize=11)
    return save_png(figure, path, overwrite)


def save_mtf_figure(patients: Sequence[PatientPhysics], path: str | Path, methods: Sequence[str],
                    overwrite: bool = False) -> Path:
    """MTF of each method relative to the full dose at the body edge, with the 0.5 level that defines MTF50."""
    order = methods
    methods = [method for method in methods if any(method in patient.mtf for patient in patients)]
    top = min(curve[0][-1] for patient in patients for curve in patient.mtf.values())
    grid = np.linspace(0, top, _POINTS)
    figure, axis = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for method in methods:
        color = method_color(method, order)
        curves = np.array([np.interp(grid, *p.mtf[method]) for p in patients if method in p.mtf])
        for curve in curves:
            axis.plot(grid, curve, color=color, alpha=0.25, linewidth=0.8)
        axis.plot(grid, curves.mean(axis=0), color=color, label=method, **_line_style(method))
    axis.axhline(0.5, color="black", linestyle="--", linewidth=1)
    axis.set_ylim(0, 1.3)
    axis.set_xlabel("spatial frequency (cycles/mm), as far as the full dose shows it")
    axis.set_ylabel("MTF relative to the full dose")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"Resolution kept at the body edge (~1000 HU), {len(patients)} patient(s)\n"
                   "MTF50: where a curve crosses 0.5; thin: per patient", fontsize=10)
    return save_png(figure, path, overwrite)


def save_detectability_figure(rows: Sequence[dict], path: str | Path, methods: Sequence[str],
                              overwrite: bool = False) -> Path:
    """CHO d' with its 95 % bootstrap CI per lesion class (x) and method (bars, in the order of ``methods``)."""
    classes = sorted({(row["lesion_mm"], row["lesion_hu"]) for row in rows})
    order = methods
    methods = [method for method in methods if any(row["method"] == method for row in rows)]
    width = 0.8 / max(len(methods), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(classes) + 3), 4.2), layout="constrained")
    for index, method in enumerate(methods):
        found = {(row["lesion_mm"], row["lesion_hu"]): row["cho"] for row in rows if row["method"] == method}
        positions = [c + (index - (len(methods) - 1) / 2) * width for c, key in enumerate(classes) if key in found]
        values = [found[key] for key in classes if key in found]
        estimate = np.array([value[0] for value in values])
        errors = np.array([[value[0] - value[1], value[2] - value[0]] for value in values]).T.clip(min=0)
        axis.bar(positions, np.nan_to_num(estimate), width, yerr=np.nan_to_num(errors), capsize=2, label=method,
                 color=method_color(method, order))
    axis.set_xticks(range(len(classes)), [f"{d:g} mm\n{c:g} HU" for d, c in classes])
    axis.set_ylabel("CHO d′ (95% CI)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axis.set_title("Low-contrast detectability of inserted lesions (channelized Hotelling observer)", fontsize=10)
    return save_png(figure, path, overwrite)
