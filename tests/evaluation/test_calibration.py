"""Calibrated uncertainty (cdm4mi.evaluation.calibration) against closed forms, and the dihedral draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdm4mi.evaluation.calibration import calibration_doses, conformal_band, describe_calibration
from cdm4mi.inference.denoise import dihedral_turn


def test_band_of_gaussian_errors_with_known_spread_is_the_normal_quantile():
    """Errors N(0, s^2) with the spread equal to s (and no input noise term): the 95 % band is 1.96 s, so
    scale = 0.98."""
    rng = np.random.default_rng(0)
    spread = rng.uniform(1.0, 5.0, 200_000)
    errors = np.abs(rng.normal(0.0, spread))
    band = conformal_band(errors, spread, np.zeros_like(spread), 0.95)
    assert band["offset"] == 0.0
    assert band["scale"] == pytest.approx(1.96 / 2, rel=0.02)


def test_band_covers_the_asked_share_of_new_voxels():
    """Split conformal: fitted on one half, the band covers the asked share of the other half, for any spread
    that is only loosely related to the error (here 5x too small, plus a noise floor it does not see)."""
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.0, 2.0, 100_000)
    noise = np.full_like(spread, 3.0)
    errors = np.abs(rng.normal(0.0, np.hypot(5 * spread, noise)))
    fit, new = slice(0, 50_000), slice(50_000, None)
    for coverage in (0.9, 0.95):
        band = conformal_band(errors[fit], spread[fit], noise[fit], coverage)
        half_width = 2 * band["scale"] * (spread[new] + band["offset"] * noise[new])
        assert np.mean(errors[new] <= half_width) == pytest.approx(coverage, abs=0.01)


def test_zero_spread_needs_the_offset_and_all_zero_is_refused():
    rng = np.random.default_rng(2)
    spread = np.where(rng.random(10_000) < 0.5, 0.0, 1.0)
    errors = np.abs(rng.normal(0.0, 1.0, 10_000))
    band = conformal_band(errors, spread, np.ones_like(spread), 0.95)
    assert band["offset"] > 0
    with pytest.raises(ValueError, match="never differ"):
        conformal_band(errors, np.zeros(10_000), np.zeros(10_000), 0.95)
    with pytest.raises(ValueError, match="coverage"):
        conformal_band(errors, spread, spread, 1.0)


def test_calibration_doses_follow_the_recipe_and_describe_names_the_split():
    assert calibration_doses({}) == [0.25]
    low, middle, high = calibration_doses({"dose_augmentation": {"dose_range": [0.1, 0.4]}})
    assert (low, middle, high) == (0.1, pytest.approx(0.2), 0.4)
    line = describe_calibration({"coverage": 0.95, "offset": 0.5, "scale": 3.2, "samples": 3, "scans": 5,
                                 "doses": [0.1, 0.5], "split": "train"})
    assert "covers 95%" in line and "5 train scan(s)" in line and "optimistic" in line


def test_dihedral_turns_are_the_eight_symmetries_and_are_undone():
    volume = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    turned = [dihedral_turn(volume, k) for k in range(8)]
    assert len({tuple(t.flatten().tolist()) + tuple(t.shape) for t in turned}) == 8
    for k, image in enumerate(turned):
        assert torch.equal(dihedral_turn(image, k, inverse=True), volume)
