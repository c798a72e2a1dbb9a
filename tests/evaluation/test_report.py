"""Metric CSV, summary JSON, the patient table and the two figures."""

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest

from cdm4mi.evaluation.medical_figures import save_patient_metric_plot, save_slice_comparison
from cdm4mi.evaluation.metrics import evaluate_patient
from cdm4mi.evaluation.report import CSV_COLUMNS, format_patient_table, write_metrics_csv, write_summary_json
from cdm4mi.evaluation.statistics import summarize


def make_rows(n_patients: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    rows = []
    for index in range(n_patients):
        target = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 12**2, 40.0, -1000.0)[None].repeat(2, axis=0)
        outputs = {"low_dose_input": target + rng.normal(0, 40, target.shape),
                   "model": target + rng.normal(0, 10 + index, target.shape)}
        rows += evaluate_patient(f"P{index:03d}", outputs, target)
    rows[0]["psnr"] = None  # as for a slice identical to its target
    return rows


def test_metrics_csv_round_trip(tmp_path):
    rows = make_rows()
    path = write_metrics_csv(rows, tmp_path / "metrics.csv")
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == CSV_COLUMNS and len(read) == len(rows)
    assert read[0]["psnr"] == "" and read[0]["patient_id"] == "P000" and read[0]["method"] == "low_dose_input"
    assert (read[1]["window_low"], read[1]["window_high"], read[1]["data_range"]) == ("-1000", "1000", "2000")
    assert float(read[1]["psnr"]) == pytest.approx(rows[1]["psnr"], abs=1e-4)
    assert float(read[1]["ssim"]) == pytest.approx(rows[1]["ssim"], abs=1e-6)
    assert float(read[5]["rmse_hu"]) == pytest.approx(rows[5]["rmse_hu"], abs=1e-4)
    with pytest.raises(FileExistsError):
        write_metrics_csv(rows, path)
    write_metrics_csv(rows[:2], path, overwrite=True)
    assert len(path.read_text().splitlines()) == 3
    assert sorted(item.name for item in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary left behind
    with pytest.raises(ValueError, match="lacks"):
        write_metrics_csv([{"patient_id": "P000"}], tmp_path / "bad.csv")


def test_summary_json_is_strict_and_states_the_window(tmp_path):
    summary = summarize(make_rows(), n_bootstrap=200)
    summary["methods"]["model"]["psnr"]["mean"] = float("inf")  # must not leak into JSON
    path = write_summary_json(summary, tmp_path / "summary.json", window=(-1000, 1000), data_range=2000,
                              extra={"dose_fraction": 0.25, "checkpoint": tmp_path / "last.ckpt"})
    text = path.read_text()
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert list(document)[:2] == ["hu_window", "data_range"]
    assert document["hu_window"] == [-1000.0, 1000.0] and document["data_range"] == 2000.0
    assert document["dose_fraction"] == 0.25 and document["checkpoint"].endswith("last.ckpt")
    assert document["summary"]["methods"]["model"]["psnr"]["mean"] is None
    assert document["summary"]["comparisons"]["low_dose_input"]["ssim"]["n"] == 3
    with pytest.raises(FileExistsError):
        write_summary_json(summary, path, window=(-1000, 1000), data_range=2000)
    with pytest.raises(ValueError, match="data_range"):
        write_summary_json(summary, tmp_path / "other.json", window=(-160, 240), data_range=2000)
    with pytest.raises(ValueError, match="extra"):
        write_summary_json(summary, tmp_path / "other.json", window=(-1000, 1000), data_range=2000,
                           extra={"hu_window": [0, 1]})


def test_patient_table_is_readable_and_matches_the_summary():
    rows = make_rows(n_patients=4)
    summary = summarize(rows, n_bootstrap=500)
    table = format_patient_table(rows, summary=summary)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0] == "HU window [-1000, 1000], data_range 2000; scored on whole slices"
    assert lines[1].startswith("4 patient(s); values are per-patient means over slices")
    model_p002 = next(line for line in lines if line.startswith("P002") and " model " in line)
    expected = summary["methods"]["model"]["rmse_hu"]["per_patient"]["P002"]
    assert f"{expected:.2f}" in model_p002.split()
    mean_line = next(line for line in lines if line.startswith("mean ± SD") and "model" in line)
    psnr = summary["methods"]["model"]["psnr"]
    assert f"{psnr['mean']:.2f} ± {psnr['sd']:.2f}" in mean_line
    assert any(line.startswith("95% CI") and f"[{psnr['ci95'][0]:.2f}, {psnr['ci95'][1]:.2f}]" in line for line in lines)
    comparison = next(line for line in lines if line.startswith("model −"))
    assert "low_dose_input" in comparison and "(p=0.125)" in comparison  # 4 patients: exact p >= 2 / 2**4
    assert "only 4 patients" in table
    plain = format_patient_table(rows, methods=["model"], metrics=("psnr", "ssim"), n_bootstrap=100)
    assert "low_dose_input" not in plain and "RMSE" not in plain
    with pytest.raises(ValueError, match="one HU window"):
        format_patient_table(rows + [dict(rows[0], window_low=-160.0, window_high=240.0, data_range=400.0)])


def test_slice_comparison_figure(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    target = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 25**2, 40.0, -1000.0)
    rng = np.random.default_rng(1)
    noisy, output = target + rng.normal(0, 40, target.shape), target + rng.normal(0, 10, target.shape)
    four = save_slice_comparison(noisy, output, target, tmp_path / "four.png", title="P001 slice 3")
    five = save_slice_comparison(noisy, output, target, tmp_path / "five.png", uncertainty_hu=np.full(target.shape, 8.0))
    four_pixels, five_pixels = matplotlib.image.imread(four), matplotlib.image.imread(five)
    assert four_pixels.shape[1] > 3 * four_pixels.shape[0]  # a row of panels
    assert five_pixels.shape[1] > four_pixels.shape[1] * 1.15  # one more panel
    assert four_pixels.std() > 0.05  # not blank
    with pytest.raises(FileExistsError):
        save_slice_comparison(noisy, output, target, four)
    with pytest.raises(ValueError, match="one shape"):
        save_slice_comparison(noisy, output[:32], target, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_patient_metric_plot_from_rows_and_summary(tmp_path):
    rows = make_rows(n_patients=3)
    from_rows = save_patient_metric_plot(rows, tmp_path / "psnr.png", metric="psnr")
    summary = summarize(rows, n_bootstrap=200)
    from_summary = save_patient_metric_plot(summary, tmp_path / "ssim.png", metric="ssim", methods=["model"])
    for path in (from_rows, from_summary):
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.std() > 0.05
    with pytest.raises(ValueError, match="no 'lpips'"):
        save_patient_metric_plot(summary, tmp_path / "x.png", metric="lpips")
    assert math.isfinite(summary["methods"]["model"]["psnr"]["mean"])
