"""Per-patient aggregation of slice metrics, bootstrap confidence intervals and paired tests.

Slices of one patient are not independent, so the unit of analysis is the patient: each patient's
slices are averaged first, then means, SDs, confidence intervals and tests run over patients. A
patient with 10 slices weighs as much as one with 2.

Rows are dicts with ``patient_id``, ``method`` and metric keys (as from
``metrics.evaluate_patient``). A metric value of ``None`` (PSNR of a slice identical to its target,
any metric of a slice with an empty mask) is left out of that patient's mean and counted in
``n_slices_undefined``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

CI_LEVEL = 0.95


def per_patient(rows: Iterable[dict], metric: str, method: str | None = None) -> dict[str, float]:
    """Mean of ``metric`` over each patient's slices: ``{patient_id: mean}``, in order of first appearance.

    ``method`` selects rows of one method; without it the rows must all be of one method (mixing
    methods into one mean is refused). Patients whose every value is ``None`` are left out.
    """
    values, _ = _patient_values(rows, metric, method)
    return {patient: float(np.mean(found)) for patient, found in values.items() if found}


def _patient_values(rows: Iterable[dict], metric: str, method: str | None) -> tuple[dict[str, list[float]], int]:
    """Defined values of ``metric`` per patient, and how many slices had ``None``."""
    values: dict[str, list[float]] = {}
    undefined = 0
    methods_seen = set()
    for row in rows:
        if method is not None and row["method"] != method:
            continue
        methods_seen.add(row["method"])
        if metric not in row:
            raise KeyError(f"per_patient: row of patient {row['patient_id']!r} has no metric {metric!r}")
        found = values.setdefault(str(row["patient_id"]), [])
        if row[metric] is None:
            undefined += 1
        else:
            found.append(float(row[metric]))
    if method is None and len(methods_seen) > 1:
        raise ValueError(f"per_patient: rows mix methods {sorted(methods_seen)}; pass method=")
    return values, undefined


def bootstrap_mean_ci(values: Sequence[float], n_bootstrap: int = 10000, seed: int = 0,
                      level: float = CI_LEVEL) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of the mean of ``values`` (one per patient), resampling patients.

    Returns ``(low, high)``, or ``None`` with fewer than 2 values (a resample of one patient is
    always that patient: no interval). Seeded, so the same inputs give the same interval.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap: must be >= 1, got {n_bootstrap}")
    generator = np.random.default_rng(seed)
    means = values[generator.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_wilcoxon(reference: Sequence[float], baseline: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired per-patient values (scipy.stats.wilcoxon).

    Returns ``n``, ``mean_difference`` (reference − baseline), ``statistic``, ``p_value``,
    ``min_attainable_p`` (2 / 2**n, the smallest exact two-sided p with n patients and no ties:
    with 5 patients nothing can reach p < 0.05) and ``reason`` (why ``p_value`` is ``None``).
    """
    reference, baseline = np.asarray(reference, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if reference.shape != baseline.shape:
        raise ValueError(f"paired_wilcoxon: {len(reference)} reference and {len(baseline)} baseline values")
    n = len(reference)
    differences = reference - baseline
    result = {"n": n, "mean_difference": float(differences.mean()) if n else None, "statistic": None,
              "p_value": None, "min_attainable_p": min(1.0, 2.0 / 2.0**n) if n else None, "reason": None}
    if n < 2:
        result["reason"] = f"{n} paired patient{'s' if n != 1 else ''}: a test needs at least 2"
    elif not np.any(differences):
        result["reason"] = "all paired differences are zero"
    else:
        test = stats.wilcoxon(reference, baseline, alternative="two-sided")
        result["statistic"], result["p_value"] = float(test.statistic), float(test.pvalue)
    return result


def summarize(
    rows: Sequence[dict],
    metrics: Sequence[str] = ("psnr", "ssim", "rmse_hu", "mae_hu"),
    methods: Sequence[str] | None = None,
    reference_method: str | None = "model",
    n_bootstrap: int = 10000,
    seed: int = 0,
) -> dict:
    """Per-patient statistics of every method and metric, and paired tests of the reference against the rest.

    ``methods`` defaults to those in ``rows`` (order of first appearance). Returns::

        {"unit": "patient", "ci_level": 0.95, "ci_method": ..., "n_bootstrap", "seed", "reference_method",
         "methods": {method: {metric: {"n_patients", "n_slices", "n_slices_undefined", "mean", "sd",
                                       "ci95": [low, high] | None, "ci_note", "per_patient": {id: mean}}}},
         "comparisons": {baseline: {metric: paired_wilcoxon(...) plus "reference"}}}

    ``n_slices`` counts slices with a defined value, ``n_slices_undefined`` those with ``None``.
    ``sd`` is the sample SD (ddof 1) across patients (``None`` with one patient). The comparisons
    pair patients that have a value for both methods. ``reference_method=None`` skips the tests; a
    reference not found in the rows is a ``ValueError``.
    """
    rows = list(rows)
    present = list(dict.fromkeys(row["method"] for row in rows))
    methods = present if methods is None else list(methods)
    missing = [method for method in methods if method not in present]
    if missing:
        raise ValueError(f"summarize: methods {missing} have no rows; found {present}")
    if reference_method is not None and reference_method not in methods:
        raise ValueError(f"reference_method: {reference_method!r} is not among the methods {methods} (or pass None)")

    summary: dict = {"unit": "patient", "ci_level": CI_LEVEL,
                     "ci_method": "percentile bootstrap over patients of the mean of per-patient means",
                     "n_bootstrap": n_bootstrap, "seed": seed, "reference_method": reference_method,
                     "methods": {}, "comparisons": {}}
    patient_means: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        summary["methods"][method] = {}
        patient_means[method] = {}
        for metric in metrics:
            values, undefined = _patient_values(rows, metric, method)
            means = {patient: float(np.mean(found)) for patient, found in values.items() if found}
            patient_means[method][metric] = means
            summary["methods"][method][metric] = _describe(values, undefined, means, n_bootstrap, seed)

    if reference_method is not None:
        for baseline in methods:
            if baseline == reference_method:
                continue
            summary["comparisons"][baseline] = {}
            for metric in metrics:
                reference_means, baseline_means = patient_means[reference_method][metric], patient_means[baseline][metric]
                paired = [patient for patient in reference_means if patient in baseline_means]
                test = paired_wilcoxon([reference_means[p] for p in paired], [baseline_means[p] for p in paired])
                summary["comparisons"][baseline][metric] = {"reference": reference_method, **test}
    return summary


def _describe(values: dict[str, list[float]], undefined: int, means: dict[str, float],
              n_bootstrap: int, seed: int) -> dict:
    patient_values = list(means.values())
    n = len(patient_values)
    ci = bootstrap_mean_ci(patient_values, n_bootstrap=n_bootstrap, seed=seed)
    note = None
    if n == 0:
        note = "no patient has a defined value"
    elif n == 1:
        note = "one patient: no confidence interval over patients"
    elif n < 5:
        note = f"only {n} patients: a percentile bootstrap interval is too narrow at this size"
    return {
        "n_patients": n,
        "n_slices": sum(len(found) for found in values.values()),
        "n_slices_undefined": undefined,
        "mean": float(np.mean(patient_values)) if n else None,
        "sd": float(np.std(patient_values, ddof=1)) if n >= 2 else None,
        "ci95": list(ci) if ci is not None else None,
        "ci_note": note,
        "per_patient": means,
    }


def finite_or_none(value):
    """``value`` with NaN and ±inf replaced by ``None``, recursively through dicts, lists and tuples (for JSON)."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
