"""`cdm4mi demo` end to end at toy size: every stage runs and writes what the README promises."""

import json

import pytest

from cdm4mi.cli.main import main


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--max-steps", "4"]) == 0
    printed = capsys.readouterr().out
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5", "demo finished"):
        assert stage in printed
    # The real slice: a row per method with PSNR, SSIM and RMSE, and the figure with the lesions circled.
    real_rows = [line.split() for line in printed.splitlines()
                 if line.split()[:1] in (["low_dose_input"], ["gaussian"], ["nlm"], ["model"]) and len(line.split()) == 4]
    assert [row[0] for row in real_rows] == ["low_dose_input", "gaussian", "nlm", "model"]
    assert all(10 < float(row[1]) < 60 and 0 < float(row[2]) <= 1 for row in real_rows)
    assert (out / "real_ct" / "ct_small_lesions.png").stat().st_size > 10_000
    assert "Nyquist, matched to its own noise); PSNR/SSIM/RMSE" in printed  # the dose in the slice's own texture
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["hu_window"] == [-1000.0, 1000.0] and summary["data_range"] == 2000.0
    assert (out / "evaluation" / "metrics.csv").is_file() and list((out / "evaluation" / "figures").glob("*.png"))
    # The physicist's columns and lesion detectability, printed and written (cdm4mi evaluate --detectability).
    for column in ("noise HU", "bias HU", "NPS peak /mm", "MTF50 /mm", "lesion contrast kept", "lesions kept"):
        assert column in printed
    assert (out / "evaluation" / "physics.csv").is_file() and set(summary["physics"]) >= {"measures", "detectability"}
    assert list((out / "denoised").iterdir())[0].is_dir()  # a DICOM series folder
    assert "PHANTOM-" not in printed and "Phantom^" not in printed  # only pseudonyms are shown
    assert main(["demo", "--quick", "--out", str(out), "--max-steps", "4"]) == 2  # no --overwrite
