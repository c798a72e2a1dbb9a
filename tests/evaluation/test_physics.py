"""Noise, bias, NPS and edge MTF against closed forms, on phantoms with known noise and known blur."""

import math

import numpy as np
import pytest
from scipy import ndimage, special

from cdm4mi.evaluation.edge_mtf import edge_mtf, edge_samples, mtf50, relative_mtf
from cdm4mi.evaluation.physics import (
    FULL_DOSE,
    extract_roi_stack,
    find_uniform_rois,
    noise_power_spectrum,
    physicist_measures,
    roi_noise_hu,
)

SIZE = 128
PIXEL_MM = 0.8
RADIUS_PX = 46.0
MTF50_SIGMAS = math.sqrt(math.log(2) / 2) / math.pi  # exp(-2 pi^2 sigma^2 f^2) = 0.5 at f = this / sigma


def disk_phantom(sigma_px: float, slices: int = 3) -> np.ndarray:
    """[slices, SIZE, SIZE] HU: a 40 HU disk in -1000 HU air whose edge is a Gaussian blur of sigma_px (exact
    profile 1040 Phi(distance / sigma)); each slice's centre sits at another sub-pixel offset."""
    volume = np.empty((slices, SIZE, SIZE))
    rows, cols = np.mgrid[:SIZE, :SIZE].astype(float)
    for k in range(slices):
        centre = SIZE / 2 + 0.37 * k
        distance = RADIUS_PX - np.hypot(rows - centre, cols - centre + 0.21 * k)
        volume[k] = -1000.0 + 1040.0 * special.ndtr(distance / sigma_px)
    return volume


def filtered_noise(shape: tuple[int, ...], transfer, std_hu: float, seed: int) -> np.ndarray:
    """Stationary noise: white noise filtered in 2D by ``transfer(f cycles/px)``, scaled to std ``std_hu``."""
    rng = np.random.default_rng(seed)
    white = rng.normal(size=shape)
    fy, fx = np.fft.fftfreq(shape[-2]), np.fft.fftfreq(shape[-1])
    gain = transfer(np.hypot(fy[:, None], fx[None, :]))
    noise = np.real(np.fft.ifft2(np.fft.fft2(white) * gain))
    return noise * std_hu / math.sqrt(np.mean(np.abs(gain) ** 2))


def ramp_noise_transfer(cutoff: float):
    """Ramp-filtered, apodized: |H|^2 = f^2 exp(-2 f^2 / cutoff^2) peaks at f = cutoff / sqrt(2) cycles/px."""
    return lambda f: f * np.exp(-(f / cutoff) ** 2)


def test_uniform_rois_lie_in_flat_soft_tissue_and_do_not_overlap():
    full = disk_phantom(1.0, 1)[0]
    rows, cols = np.mgrid[:SIZE, :SIZE]
    textured = cols > SIZE / 2  # the right half of the body gets coarse 40 HU texture: not uniform
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=full.shape), 4.0)
    full = full + np.where(textured & (full > -500), 60 * texture / texture.std(), 0.0)
    corners = find_uniform_rois(full, 16, max_per_slice=4)
    assert len(corners) == 4
    for _, row, col in corners:
        assert col + 15 <= SIZE / 2  # every ROI in the flat half
        inside = np.hypot(np.array([row, row + 15]) - SIZE / 2, np.array([col, col + 15])[:, None] - SIZE / 2)
        assert (inside < RADIUS_PX).all()  # corners in the body
    boxes = [(r, c) for _, r, c in corners]
    assert all(abs(a[0] - b[0]) >= 16 or abs(a[1] - b[1]) >= 16 for i, a in enumerate(boxes) for b in boxes[:i])


@pytest.mark.parametrize("noise", ["white", "ramp", "low-pass"])
def test_noise_and_bias_match_the_known_noise(noise):
    full = disk_phantom(1.0, 4)
    transfer = {"white": lambda f: np.ones_like(f), "ramp": ramp_noise_transfer(0.3),
                "low-pass": lambda f: np.exp(-2 * math.pi**2 * 1.5**2 * f**2)}[noise]
    noisy = full + 7.0 + filtered_noise(full.shape, transfer, 20.0, seed=1)
    corners = find_uniform_rois(full, 16)
    assert len(corners) >= 20
    full_rois, noisy_rois = extract_roi_stack(full, corners, 16), extract_roi_stack(noisy, corners, 16)
    # low-pass noise has few independent samples in the ROIs: its realized SD strays more from 20
    assert roi_noise_hu(noisy_rois, full_rois) == pytest.approx(20.0, rel=0.04 if noise != "low-pass" else 0.07)
    assert roi_noise_hu(full_rois) == pytest.approx(0.0, abs=1e-6)
    assert np.mean(noisy_rois.mean(axis=(1, 2)) - full_rois.mean(axis=(1, 2))) == pytest.approx(7.0, abs=1.0)
    # About each ROI's own plane, noise slower than the ROI is lost: nothing of ramp (CT) noise, a lot of low-pass.
    own = roi_noise_hu(noisy_rois)
    assert own == pytest.approx(20.0, rel=0.04) if noise != "low-pass" else own < 0.9 * 20.0


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance():
    rois = np.random.default_rng(2).normal(0, 15.0, (400, 32, 32))
    spectrum = noise_power_spectrum(rois, (PIXEL_MM, PIXEL_MM))
    assert spectrum.variance_hu2 == pytest.approx(15.0**2, rel=0.02)
    assert np.allclose(spectrum.nps[2:], 15.0**2 * PIXEL_MM**2, rtol=0.05)  # flat at sigma^2 dx dy
    assert spectrum.nps[1] == pytest.approx(15.0**2 * PIXEL_MM**2, rel=0.2)  # the plane takes some of the lowest bin
    assert spectrum.frequency_per_mm[-1] == pytest.approx(0.5 / PIXEL_MM)  # bins run to Nyquist


@pytest.mark.parametrize("blur_px", [0.0, 1.5])
def test_nps_peak_of_filtered_noise_is_where_theory_puts_it(blur_px):
    # ramp noise |H|^2 = f^2 exp(-2 f^2 / c^2), then a Gaussian blur: the peak moves to 1 / sqrt(2 / c^2 + 4 pi^2 s^2)
    cutoff = 0.3
    transfer = ramp_noise_transfer(cutoff)
    noise = filtered_noise((8, 256, 256), lambda f: transfer(f) * np.exp(-2 * math.pi**2 * blur_px**2 * f**2), 25.0, 3)
    rois = noise.reshape(8, 8, 32, 8, 32).transpose(0, 1, 3, 2, 4).reshape(-1, 32, 32)
    spectrum = noise_power_spectrum(rois, (PIXEL_MM, PIXEL_MM))
    expected = 1 / math.sqrt(2 / cutoff**2 + 4 * math.pi**2 * blur_px**2) / PIXEL_MM
    assert spectrum.peak_per_mm() == pytest.approx(expected, abs=0.5 / (32 * PIXEL_MM))  # half a bin
    assert spectrum.variance_hu2 == pytest.approx(25.0**2, rel=0.08)


@pytest.mark.parametrize("sigma_px", [1.2, 2.0])
def test_edge_mtf50_of_a_gaussian_blurred_edge_matches_the_closed_form(sigma_px):
    full = disk_phantom(sigma_px)
    edges = edge_samples(full, (PIXEL_MM, PIXEL_MM))
    assert edges is not None and len(edges.distance_mm) > 10_000
    frequency, mtf = edge_mtf(full, edges)
    expected = MTF50_SIGMAS / sigma_px / PIXEL_MM
    assert mtf50(frequency, mtf, 0.5 / PIXEL_MM) == pytest.approx(expected, rel=0.04)
    analytic = np.exp(-2 * math.pi**2 * (sigma_px * PIXEL_MM) ** 2 * frequency**2)
    low = frequency < 2 * expected
    assert np.allclose(mtf[low], analytic[low], atol=0.03)


@pytest.mark.parametrize("blur_px", [0.8, 1.5])
def test_relative_mtf_recovers_the_blur_added_to_the_full_dose(blur_px):
    full = disk_phantom(1.2)
    edges = edge_samples(full, (PIXEL_MM, PIXEL_MM))
    blurred = ndimage.gaussian_filter(full + np.random.default_rng(4).normal(0, 10.0, full.shape), (0, blur_px, blur_px))
    frequency, transfer = relative_mtf(blurred, full, edges)
    expected = MTF50_SIGMAS / blur_px / PIXEL_MM
    assert mtf50(frequency, transfer, 0.5 / PIXEL_MM) == pytest.approx(expected, rel=0.06)
    limit_frequency, itself = relative_mtf(full, full, edges)
    assert np.allclose(itself, 1.0) and np.array_equal(limit_frequency, frequency)
    # read where the full dose still shows something: its own MTF (1.2 px blur) >= 0.1
    limit = math.sqrt(math.log(10) / (2 * math.pi**2)) / 1.2 / PIXEL_MM
    assert frequency[-1] == pytest.approx(limit, abs=0.02)
    assert mtf50(frequency, itself) == frequency[-1]  # kept as far as it can be measured


def test_mtf50_interpolates_and_caps_at_nyquist():
    frequency = np.array([0.0, 0.1, 0.2, 0.3])
    assert mtf50(frequency, np.array([1.0, 0.8, 0.4, 0.1]), 0.3) == pytest.approx(0.175)
    assert mtf50(frequency, np.array([1.0, 0.9, 0.8, 0.7])) == 0.3
    assert mtf50(frequency, np.array([1.0, 0.9, 0.8, 0.4]), 0.2) == 0.2


def test_edge_samples_refuse_an_image_without_body():
    assert edge_samples(np.full((2, 64, 64), -1000.0), (1.0, 1.0)) is None


def test_physicist_measures_tell_a_blurring_filter_from_the_noisy_input():
    full = disk_phantom(1.2, 4)
    low = full + filtered_noise(full.shape, ramp_noise_transfer(0.3), 30.0, seed=5)
    outputs = {"low_dose_input": low, "gaussian": ndimage.gaussian_filter(low, (0, 1.5, 1.5)), "offset": low + 12.0}
    measured = physicist_measures("P1", outputs, full, (PIXEL_MM, PIXEL_MM), roi_px=16)
    rows = {row["method"]: row for row in measured.rows}
    assert list(rows) == [FULL_DOSE, "low_dose_input", "gaussian", "offset"]
    assert rows[FULL_DOSE]["noise_hu"] == pytest.approx(0.0, abs=1e-6) and rows[FULL_DOSE]["bias_hu"] == 0.0
    assert rows["low_dose_input"]["noise_hu"] == pytest.approx(30.0, rel=0.06)
    assert rows["gaussian"]["noise_hu"] < 0.5 * rows["low_dose_input"]["noise_hu"]
    assert rows["offset"]["bias_hu"] == pytest.approx(12.0, abs=1.5) and abs(rows["low_dose_input"]["bias_hu"]) < 1.5
    # NPS: the input's peak where the ramp noise puts it, the Gaussian's lower (blur), the offset's unchanged
    bin_mm = 1 / (16 * PIXEL_MM)
    assert rows["low_dose_input"]["nps_peak_per_mm"] == pytest.approx(0.3 / math.sqrt(2) / PIXEL_MM, abs=bin_mm)
    assert rows["gaussian"]["nps_peak_shift_per_mm"] < -bin_mm
    assert rows["offset"]["nps_peak_shift_per_mm"] == pytest.approx(0.0, abs=0.1 * bin_mm)
    # MTF50: the Gaussian's is its own closed form; the noisy input keeps the full dose's resolution (Nyquist)
    assert rows["gaussian"]["mtf50_per_mm"] == pytest.approx(MTF50_SIGMAS / 1.5 / PIXEL_MM, rel=0.08)
    assert rows["low_dose_input"]["mtf50_per_mm"] > 0.8 * rows[FULL_DOSE]["mtf50_per_mm"]
    assert set(measured.nps) == set(measured.mtf) == set(outputs)
