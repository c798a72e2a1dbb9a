"""benchmarks/quality_report.py's ceiling: against a reference that keeps its own noise, no denoiser passes it.
Checked on Gaussian noises with the anatomy known exactly: the MMSE estimate reaches it, removing all noise
falls short of it by the closed-form margin, and the verdict says where a target lies above it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from cli_runs import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from quality_report import ceiling_rows, verdict  # noqa: E402

OWN, ADDED = 10.0, 10.0 * np.sqrt(3)  # 25 % dose: the added noise variance is three times the scan's own


@pytest.fixture
def case() -> tuple[dict, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    clean = np.zeros((1, 256, 256))
    clean[:, 64:192, 64:192] = 40.0  # anatomy: a soft-tissue square in water
    reference = clean + rng.normal(0, OWN, clean.shape)  # the full-dose scan keeps its own noise
    draws = [reference + rng.normal(0, ADDED, clean.shape) for _ in range(2)]
    return {"name": "square", "reference": reference, "clean": clean}, np.ones(clean.shape, bool), draws


def rmse(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((image - reference) ** 2)))


def test_the_mmse_estimate_reaches_the_ceiling_and_removing_all_noise_falls_short_of_it(case):
    data, mask, draws = case
    (row,) = ceiling_rows(data, 0.25, draws, {"own_noise_hu": OWN}, mask)
    assert row["added_noise_hu"] == pytest.approx(ADDED, rel=0.01)
    assert row["rmse_hu_wide"] == pytest.approx(OWN * ADDED / np.hypot(OWN, ADDED), rel=0.01)  # 8.66 HU
    share = OWN**2 / (OWN**2 + ADDED**2)  # the part of the input's noise that is the reference's own, on average
    best = [rmse(data["clean"] + share * (low - data["clean"]), data["reference"]) for low in draws]
    assert np.mean(best) == pytest.approx(row["rmse_hu_wide"], rel=0.01)
    # a denoiser that returns the noise-free anatomy itself: error = the own noise, 1.25 dB below the ceiling
    perfect = 20 * np.log10(2000 / rmse(data["clean"], data["reference"]))
    assert row["psnr_wide"] - perfect == pytest.approx(10 * np.log10(4 / 3), abs=0.05)
    assert ceiling_rows(data, 0.25, draws, {"own_noise_hu": 0.0}, mask) == []  # own noise not measured: none


def test_the_verdict_says_where_best_classical_plus_2_db_lies_above_the_ceiling(capsys):
    rows = []
    for case, (nlm, ceiling) in {"a": (40.0, 41.0), "b": (40.0, 43.0)}.items():
        rows += [{"case": case, "dose": 0.25, "method": method, "psnr_wide": value}
                 for method, value in (("low_dose_input", 35.0), ("nlm", nlm), ("model", 39.0), ("ceiling", ceiling))]
    assert not verdict(rows, rows, 0.25)
    out = capsys.readouterr().out
    assert "lies +2.00 dB from the best classical filter on the mean; best classical + 2 dB lies above it on 1 of 2 " \
           "cases (a)" in out
    assert "[MISSED] mean PSNR >= best classical + 2 dB (gain -1.00 dB)" in out


def test_the_verdict_checks_blobs_against_the_fewest_and_names_the_best_filter_by_psnr(capsys):
    rows = []
    for case, (nlm, gaussian) in {"a": (40.0, 38.0), "b": (36.0, 37.0)}.items():
        for method, value, blobs in (("low_dose_input", 35.0, None), ("gaussian", gaussian, 1.0), ("nlm", nlm, 9.0),
                                     ("model", 41.0, 6.0)):
            rows.append({"case": case, "dose": 0.25, "method": method, "psnr_wide": value})
            if blobs is not None:
                rows.append({"case": case, "dose": 0.25, "method": method, "invented_blobs": blobs})
    image_rows = [r for r in rows if "psnr_wide" in r]
    assert not verdict(image_rows, rows, 0.25)
    out = capsys.readouterr().out
    # NLM is best by PSNR on a (9 blobs), the Gaussian on b (1 blob)
    assert "Invented blobs per slice: model 6.0, the best classical filter by PSNR on each case 5.0, gaussian 1.0." in out
    assert "[MISSED] invented blobs <= the classical filter with the fewest (gaussian 1.0, model 6.0)" in out
    for row in rows:
        if row["method"] == "model" and "invented_blobs" in row:
            row["invented_blobs"] = 1.0
    verdict(image_rows, rows, 0.25)
    assert "[met] invented blobs <= the classical filter with the fewest (gaussian 1.0, model 1.0)" in capsys.readouterr().out


def test_bm3d_when_installed_is_told_the_noise_power_spectrum_of_the_slice(monkeypatch):
    """BM3D is optional (non-commercial); when present the benchmark gives it the coloured noise's PSD (BM3D's
    ``sigma_psd`` convention: mean = pixels x variance, low-pass for a smooth kernel), not a white sigma."""
    import types

    from bench_quality import optional_bm3d
    from scan_files import water_phantom

    from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
    from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu

    monkeypatch.setitem(sys.modules, "bm3d", None)  # not installed: no row
    assert optional_bm3d(np.zeros((1, 64, 64)), (0.8, 0.8), 0) == {}
    seen = []
    monkeypatch.setitem(sys.modules, "bm3d", types.SimpleNamespace(bm3d=lambda z, sigma_psd: seen.append(sigma_psd) or z))
    clean = water_phantom(128, 0.8)
    low = simulate_low_dose_ct(clean, 0.8, 0.5, incident_flux=3e4, electronic_noise_var=0.0, seed=1, kernel_cutoff=0.5)
    out = optional_bm3d(low[None], (0.8, 0.8), 0)
    assert out["bm3d"].shape == (1, 128, 128) and len(seen) == 1
    psd = seen[0]
    assert psd.shape == (128, 128)
    assert psd.mean() == pytest.approx(psd.size * estimate_ct_noise_hu(low) ** 2, rel=1e-6)
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij"))
    assert psd[frequency > 0.35].mean() < 0.2 * psd[(frequency > 0.02) & (frequency < 0.15)].mean()  # coarse grain
