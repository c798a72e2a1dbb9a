"""Per-patient aggregation, bootstrap confidence intervals and paired Wilcoxon tests."""

import numpy as np
import pytest
from scipy import stats

from cdm4mi.evaluation.statistics import bootstrap_mean_ci, finite_or_none, paired_wilcoxon, per_patient, summarize


def rows_for(values_by_patient: dict, method: str = "model", metric: str = "psnr") -> list[dict]:
    return [{"patient_id": patient, "method": method, "slice_index": index, metric: value}
            for patient, values in values_by_patient.items() for index, value in enumerate(values)]


def test_per_patient_weighs_patients_not_slices():
    rows = rows_for({"A": [10.0] * 10, "B": [20.0, 20.0]})
    assert per_patient(rows, "psnr") == {"A": 10.0, "B": 20.0}
    summary = summarize(rows, metrics=("psnr",), reference_method=None, n_bootstrap=200)
    result = summary["methods"]["model"]["psnr"]
    assert result["mean"] == pytest.approx(15.0)  # per slice it would be 140 / 12 = 11.67
    assert result["n_patients"] == 2 and result["n_slices"] == 12
    assert result["sd"] == pytest.approx(np.std([10, 20], ddof=1))


def test_per_patient_refuses_mixed_methods_and_skips_undefined():
    rows = rows_for({"A": [30.0, None]}) + rows_for({"A": [20.0]}, method="gaussian")
    with pytest.raises(ValueError, match="mix methods"):
        per_patient(rows, "psnr")
    assert per_patient(rows, "psnr", method="model") == {"A": 30.0}
    result = summarize(rows, metrics=("psnr",), reference_method=None)["methods"]["model"]["psnr"]
    assert (result["n_slices"], result["n_slices_undefined"]) == (1, 1)


def test_bootstrap_ci_covers_true_mean_and_shrinks_with_more_patients():
    rng = np.random.default_rng(0)
    true_mean, sd = 35.0, 2.0
    covered, widths = 0, {10: [], 40: []}
    for replicate in range(200):
        for n in (10, 40):
            values = rng.normal(true_mean, sd, n)
            low, high = bootstrap_mean_ci(values, n_bootstrap=1000, seed=replicate)
            widths[n].append(high - low)
            if n == 40:
                covered += low <= true_mean <= high
    # nominal 95 %; with 200 replicates the binomial SD of the coverage is 1.5 %
    assert 0.90 <= covered / 200 <= 0.99
    # the width scales as 1 / sqrt(n): 4x the patients, half the width (2·1.96·sd/sqrt(n) ≈ 2.48 at n = 10)
    assert np.mean(widths[40]) / np.mean(widths[10]) == pytest.approx(0.5, rel=0.1)
    assert np.mean(widths[10]) == pytest.approx(2 * 1.96 * sd / np.sqrt(10), rel=0.15)


def test_bootstrap_is_seeded_and_degenerate_with_one_patient():
    values = [30.0, 31.0, 35.0, 29.0]
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)
    assert bootstrap_mean_ci([30.0]) is None
    one = summarize(rows_for({"A": [30.0, 32.0]}), metrics=("psnr",), reference_method=None)["methods"]["model"]["psnr"]
    assert one["mean"] == 31.0 and one["sd"] is None and one["ci95"] is None and "one patient" in one["ci_note"]


def test_wilcoxon_matches_scipy_and_the_exact_textbook_value():
    # scipy's documented example: 15 paired differences, exact two-sided p = 1352 / 2**15
    differences = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], float)
    patients = [f"P{index:02d}" for index in range(len(differences))]
    baseline = np.linspace(30.0, 34.0, len(differences))
    rows = (rows_for({p: [b + d / 10, b + d / 10] for p, b, d in zip(patients, baseline, differences)}, method="model")
            + rows_for({p: [b] for p, b in zip(patients, baseline)}, method="gaussian"))
    summary = summarize(rows, metrics=("psnr",), n_bootstrap=500)
    test = summary["comparisons"]["gaussian"]["psnr"]
    expected = stats.wilcoxon(baseline + differences / 10, baseline)
    assert test["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert test["p_value"] == pytest.approx(0.041259765625, rel=1e-9)
    assert test["statistic"] == 24.0 and test["n"] == 15 and test["reference"] == "model"
    assert test["mean_difference"] == pytest.approx(differences.mean() / 10)
    assert test["min_attainable_p"] == pytest.approx(2 / 2**15)


def test_wilcoxon_degenerate_cases_give_reasons():
    one = paired_wilcoxon([30.0], [29.0])
    assert one["p_value"] is None and "at least 2" in one["reason"] and one["mean_difference"] == 1.0
    zero = paired_wilcoxon([30.0, 31.0, 32.0], [30.0, 31.0, 32.0])
    assert zero["p_value"] is None and "zero" in zero["reason"]
    small = paired_wilcoxon([31.0, 32.0, 33.0, 34.0, 35.0], [30.0, 30.0, 30.0, 30.0, 30.0])
    assert small["p_value"] == pytest.approx(0.0625) and small["min_attainable_p"] == pytest.approx(0.0625)


def test_summarize_validates_methods_and_pairs_only_shared_patients():
    rows = rows_for({"A": [30.0], "B": [31.0], "C": [33.0]}) + rows_for({"A": [28.0], "B": [29.5]}, method="nlm")
    summary = summarize(rows, metrics=("psnr",), n_bootstrap=100)
    assert summary["comparisons"]["nlm"]["psnr"]["n"] == 2
    assert summary["comparisons"]["nlm"]["psnr"]["mean_difference"] == pytest.approx(1.75)
    assert summary["methods"]["model"]["psnr"]["n_patients"] == 3
    with pytest.raises(ValueError, match="reference_method"):
        summarize(rows, metrics=("psnr",), reference_method="unet")
    with pytest.raises(ValueError, match="no rows"):
        summarize(rows, metrics=("psnr",), methods=("model", "bm3d"))


def test_finite_or_none_makes_json_safe_values():
    assert finite_or_none({"a": [float("inf"), np.float32(1.5), float("nan")], "b": (np.int64(3),)}) == {
        "a": [None, 1.5, None], "b": [3]}
