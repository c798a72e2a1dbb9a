"""Slice metrics against closed forms and scikit-image; body mask; classical baselines."""

import math
import time

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cdm4mi.evaluation.baselines import BASELINES, gaussian_filter_baseline, low_dose_input, nlm_baseline
from cdm4mi.evaluation.metrics import body_mask, evaluate_patient, slice_metrics


def smooth_image(seed: int, shape=(2, 64, 64), sd_hu: float = 150.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    image = ndimage.gaussian_filter(noise, (0, 3, 3) if len(shape) == 3 else 3)
    return image / image.std() * sd_hu


def phantom(size: int = 128) -> np.ndarray:
    """Water ellipse in air with two lungs and a bone disc, edges softened: values in HU."""
    yy, xx = np.mgrid[:size, :size] / size
    image = np.where(((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.35) ** 2 < 1, 40.0, -1000.0)
    image[((yy - 0.45) / 0.15) ** 2 + ((xx - 0.35) / 0.08) ** 2 < 1] = -800.0
    image[((yy - 0.45) / 0.15) ** 2 + ((xx - 0.65) / 0.08) ** 2 < 1] = -800.0
    image[(yy - 0.7) ** 2 + (xx - 0.5) ** 2 < 0.05**2] = 700.0
    return ndimage.gaussian_filter(image, 1.0)


def test_identical_images_give_zero_error_unit_ssim_and_undefined_psnr():
    target = smooth_image(0)
    for row in slice_metrics(target, target.copy()):
        assert row["rmse_hu"] == 0.0 and row["mae_hu"] == 0.0
        assert row["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert row["psnr"] is None  # infinite PSNR is stored as None (strict JSON has no inf)
        assert (row["window_low"], row["window_high"], row["data_range"]) == (-1000.0, 1000.0, 2000.0)


@pytest.mark.parametrize("offset_hu", [1.0, 25.0, -80.0])
def test_constant_offset_closed_form(offset_hu):
    target = smooth_image(1)  # SD 150 HU: nothing reaches the ±1000 HU window edges after the offset
    assert np.abs(target).max() + abs(offset_hu) < 1000
    rows = slice_metrics(target + offset_hu, target)
    assert len(rows) == 2 and [row["slice_index"] for row in rows] == [0, 1]
    for row in rows:
        assert row["rmse_hu"] == pytest.approx(abs(offset_hu), rel=1e-9)
        assert row["mae_hu"] == pytest.approx(abs(offset_hu), rel=1e-9)
        assert row["psnr"] == pytest.approx(20 * math.log10(2000 / abs(offset_hu)), abs=1e-9)


def test_window_clipping_and_soft_tissue_window():
    target = np.full((32, 32), 1000.0)
    prediction = np.full((32, 32), 3000.0)  # bone beyond the window: clipped to 1000 HU, no error
    row = slice_metrics(prediction, target)[0]
    assert row["rmse_hu"] == 0.0 and row["psnr"] is None
    # soft-tissue window [-160, 240]: 0 vs 100 HU inside it -> 100 HU error, PSNR 20·log10(400/100)
    row = slice_metrics(np.full((32, 32), 100.0), np.zeros((32, 32)), window=(-160, 240))[0]
    assert row["data_range"] == 400.0 and row["rmse_hu"] == pytest.approx(100.0)
    assert row["psnr"] == pytest.approx(20 * math.log10(4.0))


def test_psnr_and_ssim_agree_with_scikit_image():
    """MONAI vs scikit-image on smooth random slices with noise.

    PSNR is the same formula: equal to float rounding. SSIM matches to ~1e-6 when scikit-image is
    set to MONAI's definition (11×11 Gaussian window, σ 1.5, population covariance, no border);
    the remaining difference is MONAI's float32 convolutions. scikit-image's *default* (7×7 uniform
    window, sample covariance) is a different SSIM and differs by ~1e-3 here: report which one you use.
    """
    target = smooth_image(2)
    prediction = target + ndimage.gaussian_filter(np.random.default_rng(3).normal(0, 60, target.shape), (0, 1, 1))
    rows = slice_metrics(prediction, target)
    for index, row in enumerate(rows):
        unit_target, unit_prediction = (target[index] + 1000) / 2000, (prediction[index] + 1000) / 2000
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(target[index], prediction[index], data_range=2000),
                                            abs=1e-9)
        matched = structural_similarity(unit_target, unit_prediction, data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)
        assert row["ssim"] == pytest.approx(matched, abs=1e-5)
        default = structural_similarity(unit_target, unit_prediction, data_range=1.0)
        assert abs(row["ssim"] - default) < 0.01
        # SSIM on (hu - low) with data_range 2000 is the same number (SSIM is scale- but not shift-invariant)
        shifted = [torch.from_numpy(image[index] + 1000.0)[None, None] for image in (prediction, target)]
        assert row["ssim"] == pytest.approx(SSIMMetric(spatial_dims=2, data_range=2000.0)(*shifted).item(), abs=1e-5)


def test_mask_restricts_errors_and_full_mask_changes_nothing():
    target = smooth_image(4, shape=(1, 48, 48))
    mask = np.zeros(target.shape, bool)
    mask[:, 10:30, 12:40] = True
    prediction = target + np.where(mask, 30.0, 0.0)  # error only inside the mask
    masked = slice_metrics(prediction, target, mask=mask)[0]
    assert masked["rmse_hu"] == pytest.approx(30.0) and masked["mae_hu"] == pytest.approx(30.0)
    assert masked["psnr"] == pytest.approx(20 * math.log10(2000 / 30)) and masked["n_pixels"] == 20 * 28
    assert masked["masked"]
    unmasked = slice_metrics(prediction, target)[0]
    assert not unmasked["masked"] and unmasked["n_pixels"] == 48 * 48
    assert unmasked["rmse_hu"] == pytest.approx(30.0 * math.sqrt(20 * 28 / 48**2))
    assert masked["ssim"] < unmasked["ssim"]  # the error-free outside no longer dilutes SSIM
    full = slice_metrics(prediction, target, mask=np.ones(target.shape, bool))[0]
    for key in ("psnr", "ssim", "rmse_hu", "mae_hu"):
        assert full[key] == pytest.approx(unmasked[key], rel=1e-12)
    empty = slice_metrics(prediction, target, mask=np.zeros(target.shape, bool))[0]
    assert [empty[key] for key in ("psnr", "ssim", "rmse_hu", "mae_hu")] == [None] * 4


def test_invalid_inputs_are_refused():
    image = np.zeros((32, 32))
    with pytest.raises(ValueError, match="shape"):
        slice_metrics(image, np.zeros((32, 31)))
    with pytest.raises(ValueError, match="low < high"):
        slice_metrics(image, image, window=(240, -160))
    with pytest.raises(ValueError, match="mask"):
        slice_metrics(image, image, mask=np.ones((31, 32), bool))
    with pytest.raises(ValueError, match="NaN"):
        slice_metrics(np.full((32, 32), np.nan), image)


def test_body_mask_keeps_largest_component_and_fills_holes():
    volume = np.full((2, 64, 64), -1000.0)
    yy, xx = np.mgrid[:64, :64]
    body = (yy - 30) ** 2 + (xx - 32) ** 2 < 20**2
    volume[0][body] = 40.0
    volume[0][(yy - 30) ** 2 + (xx - 32) ** 2 < 6**2] = -900.0  # lung: a hole to fill
    volume[0][58:61, 10:54] = 200.0  # the table: a separate smaller component
    mask = body_mask(volume)
    assert mask.dtype == bool and mask.shape == volume.shape
    np.testing.assert_array_equal(mask[0], body)
    assert not mask[1].any()  # all air
    np.testing.assert_array_equal(body_mask(volume[0]), body)


def test_evaluate_patient_labels_rows():
    target = smooth_image(5)
    rows = evaluate_patient("P001", {"model": target + 5, "low_dose_input": target + 20}, target)
    assert [(row["patient_id"], row["method"], row["slice_index"]) for row in rows] == [
        ("P001", "model", 0), ("P001", "model", 1), ("P001", "low_dose_input", 0), ("P001", "low_dose_input", 1)]
    assert rows[2]["rmse_hu"] == pytest.approx(20.0)


def test_baselines_reduce_error_of_40_hu_noise():
    rng = np.random.default_rng(7)
    target = np.stack([phantom(), phantom()])
    noisy = target + rng.normal(0, 40.0, target.shape)
    whole = {name: np.mean([row["rmse_hu"] for row in slice_metrics(baseline(noisy), target)])
             for name, baseline in BASELINES.items()}
    assert whole["gaussian"] < whole["low_dose_input"] and whole["nlm"] < whole["low_dose_input"]
    # inside soft tissue, 3 px from any edge (no window clipping, no edge blur): noise reduction alone.
    # A σ = 1 px Gaussian divides white-noise SD by 2·sqrt(pi)·σ ≈ 3.5: 40 -> ~11 HU.
    soft_tissue = ndimage.binary_erosion((target > -160) & (target < 240), structure=np.ones((1, 7, 7)))
    inner = {name: np.mean([row["rmse_hu"] for row in slice_metrics(baseline(noisy), target, mask=soft_tissue)])
             for name, baseline in BASELINES.items()}
    assert inner["low_dose_input"] == pytest.approx(40.0, rel=0.05)
    assert inner["gaussian"] == pytest.approx(40.0 / (2 * math.sqrt(math.pi)), rel=0.1)
    assert inner["nlm"] < 0.5 * inner["low_dose_input"]
    np.testing.assert_array_equal(low_dose_input(noisy), noisy)


def test_gaussian_baseline_does_not_smooth_across_slices():
    volume = np.zeros((3, 16, 16))
    volume[1, 8, 8] = 1000.0
    smoothed = gaussian_filter_baseline(volume, sigma_px=1.0)
    assert not smoothed[0].any() and not smoothed[2].any()
    assert smoothed[1].sum() == pytest.approx(1000.0)
    np.testing.assert_allclose(gaussian_filter_baseline(volume[1]), smoothed[1])


def test_nlm_is_fast_per_slice_and_keeps_noise_free_slices():
    noisy = phantom() + np.random.default_rng(8).normal(0, 40.0, (128, 128))
    nlm_baseline(noisy)  # warm up
    start = time.perf_counter()
    denoised = nlm_baseline(noisy)
    assert time.perf_counter() - start < 0.5
    assert denoised.shape == noisy.shape and np.isfinite(denoised).all()
    constant = np.full((1, 32, 32), 40.0)  # estimated noise SD 0: returned as is, not divided by h = 0
    np.testing.assert_array_equal(nlm_baseline(constant), constant)
