"""Projector, FBP and low-dose noise insertion: closed forms, dose scaling, magnitudes, reproducibility."""

import math

import numpy as np
import pytest
import torch
from scan_files import CT_SMALL, water_phantom

from cdm4mi.io.read import load_scan
from cdm4mi.simulate.ct_dose import (
    MU_WATER_PER_MM,
    NOMINAL_INCIDENT_FLUX,
    ParallelBeamGeometry,
    fbp,
    forward_project,
    hu_to_mu,
    outside_field_of_view,
    simulate_low_dose_ct,
)
from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu, soft_tissue_noise_hu
from cdm4mi.simulate.relative_dose import calibrate_incident_flux, simulate_relative_dose


def _radius_mm(size: int, spacing_mm: float, centre_mm: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    coords = (np.arange(size) - (size - 1) / 2) * spacing_mm
    return np.hypot(coords[:, None] - centre_mm[0], coords[None, :] - centre_mm[1])


@pytest.fixture(scope="module")
def water_cylinder() -> tuple[np.ndarray, np.ndarray]:
    """30 cm water cylinder on a 512 x 512, 0.7 mm grid (HU), and its central 8 cm ROI mask."""
    radius = _radius_mm(512, 0.7)
    return np.where(radius < 150, 0.0, -1000.0).astype(np.float32), radius < 40


@pytest.fixture(scope="module")
def noise_std(water_cylinder) -> dict[tuple[str, float], tuple[float, float]]:
    """(std, mean) of the inserted noise (HU) in the water ROI, per (model, dose fraction)."""
    hu, roi = water_cylinder
    stats = {}
    for model, dose in (("gaussian", 0.25), ("gaussian", 0.5), ("poisson", 0.25), ("poisson", 0.5), ("poisson", 1.0)):
        noise = simulate_low_dose_ct(hu, 0.7, dose_fraction=dose, model=model, seed=1)[roi] - hu[roi]
        stats[model, dose] = (float(noise.std()), float(noise.mean()))
    return stats


def test_forward_projection_matches_disk_chords() -> None:
    spacing, radius, centre, mu = 1.0, 40.0, (10.0, -6.0), 0.02
    image = torch.tensor((_radius_mm(128, spacing, centre) < radius) * mu, dtype=torch.float32)[None]
    geometry = ParallelBeamGeometry((128, 128), (spacing, spacing), 90)
    sinogram = forward_project(image, geometry)[0].numpy()
    theta, bins = geometry.angles().numpy()[:, None], geometry.bins_mm().numpy()[None, :]
    offset = bins - (centre[1] * np.cos(theta) + centre[0] * np.sin(theta))  # x along columns, y along rows
    chord = 2 * mu * np.sqrt(np.clip(radius**2 - offset**2, 0, None))
    inner = np.abs(offset) < radius - 3
    assert np.abs(sinogram - chord)[inner].max() / chord.max() < 0.02
    assert np.abs(sinogram[np.abs(offset) > radius + 2]).max() < 1e-6


@pytest.mark.parametrize("filter_name, tolerance", [("ramp", 0.03), ("hann", 0.02)])
def test_fbp_of_projection_reproduces_disk(filter_name: str, tolerance: float) -> None:
    spacing, radius, mu = 1.0, 40.0, 0.02
    distance = _radius_mm(128, spacing, (10.0, -6.0))
    image = torch.tensor((distance < radius) * mu, dtype=torch.float32)[None]
    geometry = ParallelBeamGeometry((128, 128), (spacing, spacing), 192)
    recon = fbp(forward_project(image, geometry), geometry, filter_name)[0].numpy()
    interior, outside = distance < radius - 3, (distance > radius + 3) & (_radius_mm(128, spacing) < 60)
    assert abs(recon[interior].mean() / mu - 1) < 0.005
    assert np.sqrt(np.mean((recon[interior] - mu) ** 2)) / mu < tolerance
    assert np.abs(recon[outside]).mean() / mu < tolerance


def test_hu_to_mu() -> None:
    mu = hu_to_mu(torch.tensor([-1100.0, -1000.0, 0.0, 1000.0])).numpy()
    np.testing.assert_allclose(mu, [0.0, 0.0, MU_WATER_PER_MM, 2 * MU_WATER_PER_MM], rtol=1e-6)


def test_quarter_dose_noise_magnitude_and_mean(noise_std) -> None:
    std, mean = noise_std["gaussian", 0.25]
    assert 10 < std < 80  # HU, 30 cm water, 0.7 mm pixels, I0 = 1.5e5
    assert abs(mean) < 0.1 * std


def test_inserted_noise_scales_with_extra_variance(noise_std) -> None:
    # Inserted variance is (1-k)/k times the full-dose variance: 3 at k=0.25, 1 at k=0.5.
    ratio = noise_std["gaussian", 0.25][0] / noise_std["gaussian", 0.5][0]
    assert ratio == pytest.approx(math.sqrt(3), rel=0.08)


def test_total_low_dose_noise_scales_as_inverse_sqrt_dose(noise_std) -> None:
    ratio = noise_std["poisson", 0.25][0] / noise_std["poisson", 0.5][0]
    assert ratio == pytest.approx(math.sqrt(2), rel=0.08)
    # full-dose noise plus the inserted extra noise is the whole quarter-dose noise
    total = math.hypot(noise_std["poisson", 1.0][0], noise_std["gaussian", 0.25][0])
    assert noise_std["poisson", 0.25][0] == pytest.approx(total, rel=0.08)


def test_noise_level_does_not_depend_on_num_angles() -> None:
    radius = _radius_mm(192, 1.6)
    hu = np.where(radius < 140, 40.0, -1000.0).astype(np.float32)
    roi = radius < 50
    stds = [(simulate_low_dose_ct(hu, 1.6, num_angles=n, seed=3) - hu)[roi].std() for n in (120, 360)]
    assert stds[0] == pytest.approx(stds[1], rel=0.1)


def test_full_dose_gaussian_is_identity_and_dtype() -> None:
    hu = np.linspace(-1000, 1000, 64 * 64, dtype=np.float64).reshape(64, 64)
    out = simulate_low_dose_ct(hu, 0.8, dose_fraction=1.0)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_array_equal(out, hu.astype(np.float32))


def test_seed_reproducible_and_distinct() -> None:
    hu = np.where(_radius_mm(96, 2.0) < 80, 20.0, -1000.0).astype(np.float32)
    first = simulate_low_dose_ct(hu, 2.0, seed=7)
    np.testing.assert_array_equal(first, simulate_low_dose_ct(hu, 2.0, seed=7))
    np.testing.assert_array_equal(first, simulate_low_dose_ct(hu, 2.0, rng=np.random.default_rng(7)))
    assert np.abs(first - simulate_low_dose_ct(hu, 2.0, seed=8)).mean() > 1.0


def test_padding_outside_the_field_of_view_gets_no_noise() -> None:
    """A scanner writes the padding outside its reconstructed circle (-3024 HU here) unchanged at every dose: the
    simulated low dose adds noise to air and tissue, not there (``cdm4mi denoise`` passes it through likewise)."""
    radius = _radius_mm(96, 2.0)
    hu = np.where(radius < 60, 20.0, -1000.0).astype(np.float32)
    hu[radius > 90] = -3024.0
    out = simulate_low_dose_ct(hu, 2.0, dose_fraction=0.1, seed=3)
    np.testing.assert_array_equal(out[radius > 90], -3024.0)
    air = (radius > 65) & (radius < 85)
    assert np.std(out[air] - hu[air]) > 1.0 and np.std(out[radius < 55] - 20.0) > 1.0
    np.testing.assert_array_equal(outside_field_of_view(np.array([-3024.0, -1075.0, -1073.0, -1000.0])),
                                  [True, True, False, False])
    np.testing.assert_array_equal(outside_field_of_view(np.array([-3024.0, -1200.0]), noise_hu=100.0),
                                  [True, False])  # 5 x the noise below the floor: noisy air is not padding


def test_volume_is_simulated_slice_by_slice() -> None:
    slice_hu = np.where(_radius_mm(64, 3.0) < 80, 50.0, -1000.0).astype(np.float32)
    volume = np.stack([slice_hu, slice_hu + 10, slice_hu])
    out = simulate_low_dose_ct(volume, (3.0, 3.0), seed=5)
    assert out.shape == volume.shape and out.dtype == np.float32
    # the first slice draws the first random numbers, exactly as a lone slice would
    np.testing.assert_allclose(out[0], simulate_low_dose_ct(slice_hu, 3.0, seed=5), atol=1e-3)
    assert np.abs((out[0] - volume[0]) - (out[2] - volume[2])).mean() > 1.0  # independent noise per slice


def test_poisson_model_runs_on_anisotropic_pixels() -> None:
    hu = np.where(_radius_mm(80, 2.0) < 60, 0.0, -1000.0).astype(np.float32)
    out = simulate_low_dose_ct(hu, (2.0, 2.5), model="poisson", filter_name="ramp", seed=0)
    assert np.all(np.isfinite(out)) and np.abs(out - hu).mean() > 1.0


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"dose_fraction": 0.0}, "dose_fraction"),
        ({"dose_fraction": 1.5}, "dose_fraction"),
        ({"incident_flux": 0.0}, "incident_flux"),
        ({"electronic_noise_var": -1.0}, "electronic_noise_var"),
        ({"model": "gauss"}, "model"),
        ({"filter_name": "shepp"}, "filter_name"),
        ({"num_angles": 1}, "num_angles"),
        ({"seed": 1, "rng": np.random.default_rng(1)}, "seed, rng"),
        ({"pixel_spacing_mm": -1.0}, "pixel_spacing_mm"),
    ],
)
def test_invalid_options_raise(kwargs: dict, option: str) -> None:
    arguments = {"hu": np.zeros((16, 16), np.float32), "pixel_spacing_mm": 1.0} | kwargs
    with pytest.raises(ValueError, match=option):
        simulate_low_dose_ct(**arguments)


@pytest.mark.parametrize("hu", [np.zeros(16), np.zeros((1, 1, 16, 16)), np.full((8, 8), np.nan)])
def test_invalid_images_raise(hu: np.ndarray) -> None:
    with pytest.raises(ValueError, match="hu"):
        simulate_low_dose_ct(hu, 1.0)


@pytest.fixture(scope="module")
def scan_with_own_noise() -> tuple[np.ndarray, np.ndarray, float, float]:
    """A 0.8 mm water phantom given the full-dose noise of I0 = 3e4 (dose 0.5 adds exactly the full-dose
    variance): (clean HU, full-dose HU, that I0, the known own noise std in soft tissue, HU)."""
    clean = water_phantom(256, 0.8)
    flux = 3e4
    full = simulate_low_dose_ct(clean, 0.8, 0.5, incident_flux=flux, electronic_noise_var=0.0, seed=11)
    return clean, full, flux, soft_tissue_noise_hu(full - clean, clean)


def test_calibration_recovers_the_flux_of_the_scans_own_noise(scan_with_own_noise) -> None:
    _, full, flux, own = scan_with_own_noise
    assert calibrate_incident_flux(full, 0.8, own) == pytest.approx(flux, rel=0.06)  # std within 3 %
    assert calibrate_incident_flux(full, 0.8, 2 * own) == pytest.approx(flux / 4, rel=0.06)  # b ~ 1/sigma^2


@pytest.mark.parametrize("given", [True, False])
def test_relative_dose_adds_own_noise_times_sqrt_of_inverse_dose_minus_one(scan_with_own_noise, given) -> None:
    _, full, flux, own = scan_with_own_noise
    noisy, info = simulate_relative_dose(full, 0.8, 0.25, own_noise_hu=own if given else None, seed=3)
    assert info["calibrated"] and info["own_noise_source"] == ("given" if given else "estimated")
    assert info["own_noise_hu"] == pytest.approx(own, rel=0 if given else 0.15)
    added = soft_tissue_noise_hu(noisy - full, full)
    assert info["added_noise_hu"] == pytest.approx(added)
    assert added == pytest.approx(own * math.sqrt(3), rel=0.1 if given else 0.15)
    assert info["incident_flux"] == pytest.approx(flux, rel=0.06 if given else 0.35)
    assert info["electronic_noise_var"] == pytest.approx(10 * info["incident_flux"] / NOMINAL_INCIDENT_FLUX)


def test_relative_dose_on_a_real_slice() -> None:
    """CT_small is an 8.5 cm crop: the nominal I0 adds ~5 HU at quarter dose, a sixth of its own noise."""
    scan = load_scan(CT_SMALL, modality="CT")
    own = estimate_ct_noise_hu(scan.array)
    nominal = simulate_low_dose_ct(scan.array, scan.spacing_mm[1:], 0.25, seed=4)
    assert soft_tissue_noise_hu(nominal - scan.array, scan.array) < own / 3
    for dose in (0.25, 0.5):
        noisy, info = simulate_relative_dose(scan.array, scan.spacing_mm[1:], dose, seed=4)
        assert info["calibrated"] and info["own_noise_hu"] == own and info["incident_flux"] < 1e4
        assert info["added_noise_hu"] == pytest.approx(own * math.sqrt(1 / dose - 1), rel=0.1)
        assert estimate_ct_noise_hu(noisy) == pytest.approx(own / math.sqrt(dose), rel=0.1)


def test_smoothed_scan_falls_back_to_the_nominal_flux() -> None:
    clean = water_phantom(128, 1.0)
    assert calibrate_incident_flux(clean, 1.0, 1.9) is None and calibrate_incident_flux(clean, 1.0, math.nan) is None
    noisy, info = simulate_relative_dose(clean, 1.0, 0.25, seed=2)
    assert not info["calibrated"] and info["own_noise_hu"] < 1.0 and info["incident_flux"] == NOMINAL_INCIDENT_FLUX
    np.testing.assert_array_equal(noisy, simulate_low_dose_ct(clean, 1.0, 0.25, seed=2))
    air = np.full((64, 64), -1000.0, np.float32)  # nothing to measure in
    _, info = simulate_relative_dose(air, 1.0, 0.25, seed=2)
    assert not info["calibrated"] and math.isnan(info["own_noise_hu"]) and math.isnan(info["added_noise_hu"])


@pytest.mark.parametrize("kwargs, option", [({"own_noise_hu": -1.0}, "own_noise_hu"),
                                            ({"own_noise_hu": math.inf}, "own_noise_hu"),
                                            ({"dose_fraction": 0.0}, "dose_fraction")])
def test_relative_dose_invalid_options_raise(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        simulate_relative_dose(np.zeros((16, 16), np.float32), 1.0, **({"dose_fraction": 0.25} | kwargs))
