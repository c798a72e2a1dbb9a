"""The physicist's part of a held-out evaluation: ``physics.csv`` (one row per patient and method), its summary
over patients with paired tests, a printed table, one figure per measure, and with ``--detectability`` the
lesion detectability of every method (CHO/NPW d', lesion classes kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cdm4mi.evaluation.detectability import classes_lost, detectability
from cdm4mi.evaluation.medical_figures import save_patient_metric_plot
from cdm4mi.evaluation.physics import FULL_DOSE, PHYSICS_METRICS, PatientPhysics
from cdm4mi.evaluation.physics_figures import save_detectability_figure, save_mtf_figure, save_nps_figure
from cdm4mi.evaluation.report import format_patient_table, write_metrics_csv
from cdm4mi.evaluation.statistics import summarize

LESION_METRIC = "lesion_contrast_kept"
PHYSICS_COLUMNS = ("patient_id", "method", *PHYSICS_METRICS, "nps_mean_per_mm", LESION_METRIC, "n_rois", "roi_px",
                   "n_edge_samples")
HEADING = ("Physicist's measures (HU, no window). In uniform ROIs of the full dose: noise (HU SD), bias (mean HU "
           "shift),\nNPS peak of method − full dose and its shift from the low-dose input's. MTF50: at the body "
           "edge, relative to\nthe full dose (the full dose's own value is the cap: resolution kept as far as it "
           "can be measured)")


@dataclass
class PhysicsReport:
    table: str  # the physicist's table (and the detectability table), for printing
    summary: dict  # summary.json's "physics": per-patient statistics, detectability rows, classes kept
    files: list[Path] = field(default_factory=list)


def write_physics_report(patients: Sequence[PatientPhysics], lesion_rois: dict | None, out: Path,
                         methods: Sequence[str], seed: int = 0) -> PhysicsReport:
    """physics.csv, per-measure figures (nps.png, mtf.png, noise_hu.png, bias_hu.png; with lesions
    lesion_contrast_kept.png and detectability.png) in ``out``; ``methods`` in table order (full dose first)."""
    rows = [{LESION_METRIC: None, **row} for patient in patients for row in patient.rows]
    lesions = any(row[LESION_METRIC] is not None for row in rows)
    metrics = (*PHYSICS_METRICS, LESION_METRIC) if lesions else PHYSICS_METRICS
    methods = [FULL_DOSE, *(method for method in methods if method != FULL_DOSE)]
    summary = summarize(rows, metrics=metrics, methods=methods, reference_method="model", seed=seed)
    files = [write_metrics_csv(rows, out / "physics.csv", overwrite=True, columns=PHYSICS_COLUMNS)]
    if any(patient.nps for patient in patients):
        files.append(save_nps_figure(patients, out / "nps.png", methods, overwrite=True))
    if any(patient.mtf for patient in patients):
        files.append(save_mtf_figure(patients, out / "mtf.png", methods, overwrite=True))
    for metric in ("noise_hu", "bias_hu", *((LESION_METRIC,) if lesions else ())):
        files.append(save_patient_metric_plot(summary, out / f"{metric}.png", metric=metric, methods=methods,
                                              overwrite=True))
    table = format_patient_table(rows, methods=methods, metrics=metrics, summary=summary, heading=HEADING)
    document = {"measures": summary}
    if lesion_rois:
        detect = detectability(lesion_rois, seed)
        kept = lesions_kept(detect, methods)
        document.update(detectability=detect, lesion_classes_kept=kept)
        table += "\n\n" + format_detectability(detect, methods, kept)
        if detect:
            files.append(save_detectability_figure(detect, out / "detectability.png", methods, overwrite=True))
    return PhysicsReport(table, document, files)


def lesions_kept(rows: Sequence[dict], methods: Sequence[str]) -> dict[str, dict]:
    """Per method: lesion classes measured, and those whose CHO d' fell below the low-dose input's."""
    kept = {}
    for method in methods:
        lost = classes_lost(rows, method)
        if lost is not None:
            total = sum(row["method"] == method for row in rows)
            kept[method] = {"classes": total, "kept": total - len(lost), "lost": [list(key) for key in lost]}
    return kept


def format_detectability(rows: Sequence[dict], methods: Sequence[str], kept: dict[str, dict]) -> str:
    """One line per lesion class, one column per method: CHO d' [95 % CI], then the classes each method keeps."""
    methods = [method for method in methods if any(row["method"] == method for row in rows)]
    classes = sorted({(row["lesion_mm"], row["lesion_hu"]) for row in rows})
    table = [["lesion", *methods]]
    for diameter, contrast in classes:
        cells = []
        for method in methods:
            row = next((r for r in rows if r["method"] == method and (r["lesion_mm"], r["lesion_hu"]) ==
                        (diameter, contrast)), None)
            finite = row is not None and all(math.isfinite(value) for value in row["cho"])
            cells.append(f"{row['cho'][0]:.2f} [{row['cho'][1]:.2f}, {row['cho'][2]:.2f}]" if finite else "n/a")
        table.append([f"{diameter:g} mm {contrast:g} HU", *cells])
    table.append(["lesions kept", *(f"{kept[m]['kept']}/{kept[m]['classes']}" if m in kept else "n/a"
                                    for m in methods)])
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in table]
    rule = "-" * len(lines[0])
    counts = sorted({row["rois"][0] for row in rows})
    span = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"
    head = ("Low-contrast detectability: disks inserted into full and low dose before every method ran; CHO d′ "
            f"[95% bootstrap CI]\nper lesion class; {span} lesion ROIs per class pooled over patients, as many "
            "background ROIs (the same places without lesions)")
    foot = ("lesions kept: classes whose CHO d′ is not below the low-dose input's even at its upper 95% bound "
            "(no processing can add information)")
    return "\n".join([head, lines[0], rule, *lines[1:-1], rule, lines[-1], foot])
