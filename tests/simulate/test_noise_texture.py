"""Noise texture: the kernel cutoff sets the grain, the fit recovers a known kernel, simulated doses and the
dose augmentation's bank take the scan's texture, and the level estimate holds for smooth and sharp kernels."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scan_files import CT_SMALL, water_phantom

from cdm4mi.data.dose_augmentation import build_noise_bank
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.noise_estimate import (
    estimate_ct_noise_hu,
    plane_residuals,
    soft_tissue_mask,
    soft_tissue_noise_hu,
    window_correlation,
)
from cdm4mi.simulate.relative_dose import (
    DEFAULT_CUTOFF,
    fit_kernel_cutoff,
    simulate_relative_dose,
    simulated_noise_correlation,
    texture_noise,
)

SPACING = 0.8


@pytest.fixture(scope="module")
def scans() -> dict[float, tuple[np.ndarray, np.ndarray, float]]:
    """Kernel cutoff -> (clean phantom, "full-dose" scan with own noise of that kernel, own noise std HU)."""
    clean = water_phantom(256, SPACING)
    cases = {}
    for cutoff in (0.5, 1.0, 1.6):
        full = simulate_low_dose_ct(clean, SPACING, 0.5, incident_flux=3e4, electronic_noise_var=0.0, seed=7,
                                    kernel_cutoff=cutoff)
        cases[cutoff] = clean, full, soft_tissue_noise_hu(full - clean, clean)
    return cases


def _correlation_in_soft_tissue(noise: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Correlation at 1, 2, 3 px of a known noise image, on the windows where the reference is soft tissue."""
    grid = sliding_window_view(soft_tissue_mask(reference), (14, 14))[::7, ::7].all(axis=(-1, -2))
    return window_correlation(plane_residuals(noise, grid), 3)


def test_a_smaller_cutoff_makes_coarser_weaker_noise_as_the_table_says(scans):
    levels, lag1 = [], []
    for cutoff, (clean, full, own) in sorted(scans.items()):
        measured = _correlation_in_soft_tissue(full - clean, clean)
        np.testing.assert_allclose(measured[:2], simulated_noise_correlation(cutoff)[:2], atol=0.05)
        levels.append(own)
        lag1.append(measured[0])
    assert lag1[0] > 0.75 and lag1[-1] < 0.45  # 0.5: coarse grain; 1.6: close to the plain ramp's
    assert np.all(np.diff(lag1) < -0.1) and np.all(np.diff(levels) > 0)  # same photons, sharper kernel: more noise


@pytest.mark.parametrize("cutoff", [0.5, 1.6])
def test_fit_recovers_the_kernel_and_the_dose_adds_noise_of_that_texture(scans, cutoff):
    clean, full, own = scans[cutoff]
    fit = fit_kernel_cutoff(full)
    assert fit.cutoff == pytest.approx(cutoff, rel=0.1)
    np.testing.assert_allclose(fit.own_correlation[:2], fit.simulated_correlation[:2], atol=0.05)
    noisy, info = simulate_relative_dose(full, SPACING, 0.25, seed=3)
    assert info["kernel_cutoff"] == fit.cutoff and info["texture"] == fit
    own_texture = _correlation_in_soft_tissue(full - clean, clean)
    np.testing.assert_allclose(_correlation_in_soft_tissue(noisy - full, clean)[:2], own_texture[:2], atol=0.06)
    assert info["added_noise_hu"] == pytest.approx(own * math.sqrt(3), rel=0.15)  # the level still calibrated
    bank = build_noise_bank(full[None], (SPACING, SPACING), realizations=1, seed=0)  # training noise: same texture
    assert bank.kernel_cutoff == fit.cutoff
    np.testing.assert_allclose(_correlation_in_soft_tissue(bank.noise[0, 0], clean)[:2], own_texture[:2], atol=0.06)


def test_texture_noise_has_the_scans_grain_at_the_level_asked(scans):
    """The fresh noise the adaptation recorrupts with (and the benchmark's BM3D reads its spectrum from)."""
    clean, full, _ = scans[0.5]
    noise = texture_noise(full, SPACING, 12.0, seed=4)
    assert noise.shape == full.shape
    assert soft_tissue_noise_hu(noise, full) == pytest.approx(12.0, rel=1e-4)
    own_texture = _correlation_in_soft_tissue(full - clean, clean)
    np.testing.assert_allclose(_correlation_in_soft_tissue(noise, clean)[:2], own_texture[:2], atol=0.06)
    np.testing.assert_array_equal(texture_noise(full, SPACING, 12.0, seed=4, kernel_cutoff=fit_kernel_cutoff(full).cutoff),
                                  noise)  # the fitted cutoff, given, is the one it fits
    plain = texture_noise(full, SPACING, 12.0, seed=4, kernel_cutoff=1.6)  # a given cutoff wins: finer grain
    assert _correlation_in_soft_tissue(plain, clean)[0] < own_texture[0] - 0.2


@pytest.mark.parametrize("cutoff", [0.5, 1.0, 1.6])
def test_level_estimate_holds_for_smooth_and_sharp_kernels(scans, cutoff):
    _, full, own = scans[cutoff]
    assert estimate_ct_noise_hu(full) == pytest.approx(own, rel=0.12)  # measured 0.89-0.97 of it


def test_texture_is_left_plain_without_measurable_own_noise_or_when_given(scans):
    clean, full, _ = scans[0.5]
    _, info = simulate_relative_dose(clean, SPACING, 0.25, seed=1)
    assert info["kernel_cutoff"] == DEFAULT_CUTOFF and info["texture"] is None
    # a level given from elsewhere does not make a noiseless image's texture measurable
    noisy, info = simulate_relative_dose(clean, SPACING, 0.25, own_noise_hu=10.0, seed=1)
    assert info["kernel_cutoff"] == DEFAULT_CUTOFF and info["texture"] is None
    np.testing.assert_array_equal(noisy, simulate_relative_dose(clean, SPACING, 0.25, own_noise_hu=10.0, seed=1,
                                                                kernel_cutoff=1.0)[0])
    _, info = simulate_relative_dose(full, SPACING, 0.25, seed=1, kernel_cutoff=2.0)
    assert info["kernel_cutoff"] == 2.0 and info["texture"] is None
    _, info = simulate_relative_dose(full, SPACING, 0.25, seed=1, filter_name="ramp")  # no window to fit
    assert info["kernel_cutoff"] == DEFAULT_CUTOFF and info["texture"] is None


def test_real_slice_gets_the_texture_it_reports():
    scan = load_scan(CT_SMALL, modality="CT")
    noisy, info = simulate_relative_dose(scan.array, scan.spacing_mm[1:], 0.25, seed=2)
    assert info["texture"] is not None and 0.2 <= info["kernel_cutoff"] <= 8
    added = _correlation_in_soft_tissue((noisy - scan.array)[0], scan.array[0])
    np.testing.assert_allclose(added[:2], info["texture"].simulated_correlation[:2], atol=0.06)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "smooth"])
def test_bad_cutoffs_are_refused(bad):
    with pytest.raises(ValueError, match="kernel_cutoff"):
        simulate_relative_dose(np.zeros((32, 32), np.float32), 1.0, 0.25, kernel_cutoff=bad)
    with pytest.raises(ValueError, match="kernel_cutoff"):
        simulate_low_dose_ct(np.zeros((32, 32), np.float32), 1.0, 0.25, kernel_cutoff=bad)
