"""Model observers against closed forms on white noise; lesion insertion, ROIs and invented structure on a phantom."""

import itertools
import math
from functools import partial

import numpy as np
import pytest
from scipy import ndimage

from cdm4mi.evaluation.observers import (
    Lesion,
    cho_dprime,
    class_centres,
    disk_profile,
    dprime_with_ci,
    extract_rois,
    insert_lesions,
    invented_structure,
    laguerre_gauss_channels,
    npw_dprime,
    signal_absent_centres,
    soft_tissue_mask,
)

ROI = 16
DISK_PX = 8.0
CONTRAST_HU = 10.0
SIGMA_HU = 20.0
SIGNAL = CONTRAST_HU * disk_profile(ROI, DISK_PX)
CHANNELS = laguerre_gauss_channels(ROI, width_px=1.5 * DISK_PX / 2)


def white_rois(seed: int, n: int = 400, sigma: float = SIGMA_HU) -> tuple[np.ndarray, np.ndarray]:
    """Signal-present and signal-absent ROIs [n, ROI, ROI] on white Gaussian noise of std ``sigma`` HU."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, sigma, (n, ROI, ROI)) + SIGNAL, rng.normal(0, sigma, (n, ROI, ROI))


def body_phantom(size: int = 160, noise_hu: float = 5.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noise-free, noisy) HU: a 40 HU water ellipse in -1000 HU air with an 800 HU bone ring inside."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    clean = np.where((yy / 72) ** 2 + (xx / 58) ** 2 < 1, 40.0, -1000.0)
    clean[(np.hypot(yy, xx) > 20) & (np.hypot(yy, xx) < 25)] = 800.0
    return clean, clean + np.random.default_rng(seed).normal(0, noise_hu, clean.shape)


def test_disk_profile_keeps_area_down_to_sub_pixel_sizes():
    for diameter in (0.5, 1.3, 4.0, 9.7):
        disk = disk_profile(15, diameter)
        assert disk.sum() == pytest.approx(math.pi * diameter**2 / 4, rel=0.04)
        assert np.allclose(disk, disk.T) and np.allclose(disk, disk[::-1, ::-1])  # centred on (7, 7)
    assert 0 < disk_profile(3, 0.5).max() < 0.25  # drawn, but dimmer than a full pixel
    assert disk_profile(15, 9.7)[7, 7] == 1.0 and disk_profile(15, 9.7)[7, 1] == 0.0


def test_laguerre_gauss_channels_are_orthonormal_and_follow_the_formula():
    channels = laguerre_gauss_channels(64, 10, width_px=6.0).reshape(10, -1)
    assert np.allclose(channels @ channels.T, np.eye(10), atol=1e-3)
    assert channels[0, 32 * 64 + 32] == pytest.approx(math.sqrt(2) / 6.0)
    # u_1(r) = sqrt(2) / a exp(-pi r^2 / a^2) (1 - 2 pi r^2 / a^2): negative past r = a / sqrt(2 pi) = 2.39 px
    grid = channels[1].reshape(64, 64)
    x = 2 * math.pi * 3**2 / 6.0**2
    assert grid[32, 35] == pytest.approx(math.sqrt(2) / 6.0 * math.exp(-x / 2) * (1 - x)) and grid[32, 35] < 0
    assert grid[32, 34] > 0


def test_npw_with_the_signal_as_template_matches_the_closed_form():
    present, absent = white_rois(seed=1)
    ideal = np.linalg.norm(SIGNAL) / SIGMA_HU  # d' = ||s|| / sigma on white noise
    assert npw_dprime(present, absent, SIGNAL) == pytest.approx(ideal, rel=0.10)
    # estimated template, fitted on 200 + 200 ROIs: its noise adds n_pix sigma^2 (2 / 200) to ||w||^2
    noisy_template = np.linalg.norm(SIGNAL) ** 2 / (
        SIGMA_HU * math.sqrt(np.linalg.norm(SIGNAL) ** 2 + ROI**2 * SIGMA_HU**2 * 2 / 200))
    assert npw_dprime(present, absent) == pytest.approx(noisy_template, rel=0.10)
    assert npw_dprime(present, absent, holdout=False) > 1.05 * npw_dprime(present, absent)  # resubstitution


def test_cho_is_near_ideal_on_white_noise_and_beats_npw_on_lumpy_backgrounds():
    present, absent = white_rois(seed=2)
    ideal = np.linalg.norm(SIGNAL) / SIGMA_HU
    cho = cho_dprime(present, absent, CHANNELS)
    # NPW with the true signal is the ideal observer here: CHO can only approach it from below
    assert 0.85 * ideal < cho < 1.05 * ideal
    assert cho >= 0.95 * npw_dprime(present, absent)  # both with estimated templates, held out
    assert cho_dprime(present, absent, CHANNELS, holdout=False) >= cho
    rng = np.random.default_rng(3)

    def lumpy(n: int) -> np.ndarray:  # white 10 HU + smooth lumps of 20 HU std: NPW cannot prewhiten them
        lumps = ndimage.gaussian_filter(rng.normal(size=(n, 3 * ROI, 3 * ROI)), (0, 4, 4), mode="wrap")
        lumps = lumps[:, ROI:2 * ROI, ROI:2 * ROI]
        return rng.normal(0, 10, (n, ROI, ROI)) + 20 * lumps / lumps.std()

    lumpy_present, lumpy_absent = lumpy(400) + SIGNAL, lumpy(400)
    assert cho_dprime(lumpy_present, lumpy_absent, CHANNELS) > 2 * npw_dprime(lumpy_present, lumpy_absent, SIGNAL)


def test_cho_halves_when_the_noise_doubles():
    ratio = cho_dprime(*white_rois(seed=4, sigma=2 * SIGMA_HU), CHANNELS) / cho_dprime(*white_rois(seed=5), CHANNELS)
    assert 0.4 < ratio < 0.6


def test_dprime_is_zero_within_its_interval_when_both_classes_are_alike():
    rng = np.random.default_rng(6)
    _, absent = white_rois(seed=7)
    for observer in (partial(cho_dprime, channels=CHANNELS), npw_dprime):
        d, lo, hi = dprime_with_ci(observer, absent[:200], absent[200:], rng=rng)
        assert lo < 0 < hi and abs(d) < 0.5


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_rois():
    rng = np.random.default_rng(8)
    present, absent = white_rois(seed=9)
    observer = partial(cho_dprime, channels=CHANNELS)
    few = dprime_with_ci(observer, present[:100], absent[:100], rng=rng)
    many = dprime_with_ci(observer, present, absent, rng=rng)
    for d, lo, hi in (few, many):
        assert lo <= d <= hi
    assert (many[2] - many[1]) < 0.7 * (few[2] - few[1])  # width ~ 1 / sqrt(N): expect ~0.5


def test_insert_lesions_puts_the_recorded_contrast_in_soft_tissue_only():
    clean, noisy = body_phantom()
    spacing = 0.8
    image, lesions = insert_lesions(noisy, spacing, (4.0, 8.0), (10.0, 25.0), 3, np.random.default_rng(10))
    assert len(lesions) == 12 and {(les.diameter_mm, les.contrast_hu) for les in lesions} == \
        set(itertools.product((4.0, 8.0), (10.0, 25.0)))
    added = image - noisy
    total = sum(les.contrast_hu * math.pi * (les.diameter_mm / 2 / spacing) ** 2 for les in lesions)
    assert added.sum() == pytest.approx(total, rel=0.01)
    yy, xx = np.mgrid[:160, :160]
    for les in lesions:
        radius = les.diameter_mm / 2 / spacing
        distance = np.hypot(yy - les.row, xx - les.col)
        assert np.allclose(added[distance <= radius - 1], les.contrast_hu)
        # disk + one-diameter margin in the water, never in air or bone (1 px slack for the median filter)
        assert np.all(clean[distance <= 3 * radius] == 40.0)
        disk, ring = distance <= radius - 1, (distance > radius + 2) & (distance < 3 * radius)
        measured = image[disk].mean() - image[ring].mean()
        noise_of_difference = 5.0 * math.sqrt(1 / disk.sum() + 1 / ring.sum())
        assert measured == pytest.approx(les.contrast_hu, abs=4 * noise_of_difference)
    for first, second in itertools.combinations(lesions, 2):
        gap = max(first.diameter_mm, second.diameter_mm) / spacing
        radii = (first.diameter_mm + second.diameter_mm) / 2 / spacing
        assert math.hypot(first.row - second.row, first.col - second.col) >= radii + gap


def test_insert_lesions_respects_the_body_mask_and_stops_when_room_runs_out():
    clean, noisy = body_phantom()
    left = np.zeros(clean.shape, bool)
    left[:, :80] = True
    image, lesions = insert_lesions(noisy, 0.8, (8.0,), (20.0,), 1000, np.random.default_rng(11), left)
    assert 3 <= len(lesions) < 1000  # as many as fit, without looping
    assert all(les.col + 5 + 10 < 80 for les in lesions)  # disk and margin left of the mask edge
    assert np.all(image[:, 80:] == noisy[:, 80:])
    assert not soft_tissue_mask(clean)[80, 80 - 22]  # the bone ring is not soft tissue


def test_absent_rois_avoid_lesions_and_every_method_is_read_at_the_same_centres():
    clean, noisy = body_phantom()
    rng = np.random.default_rng(12)
    image, lesions = insert_lesions(noisy, 0.8, (4.0,), (20.0,), 6, rng, roi_size=ROI)
    absent = signal_absent_centres(noisy, lesions, 0.8, ROI, 40, rng)
    assert 5 <= len(absent) < 40  # limited room: fewer come back
    added = image - noisy
    assert not extract_rois(added, absent, ROI).any()
    assert np.all(soft_tissue_mask(noisy)[absent[:, 0], absent[:, 1]])
    chebyshev = np.abs(absent[:, None] - absent[None]).max(-1) + ROI * np.eye(len(absent), dtype=int)
    assert chebyshev.min() >= ROI  # absent ROIs do not overlap
    present = class_centres(lesions)[(4.0, 20.0)]
    assert present.shape == (len(lesions), 2)
    smoothed = ndimage.gaussian_filter(image, 1.0)
    for method in (image, smoothed):
        rois = extract_rois(method, present, ROI)
        assert rois.shape == (len(lesions), ROI, ROI)
        row, col = present[0]
        assert np.array_equal(rois[0], method[row - ROI // 2:row + ROI // 2, col - ROI // 2:col + ROI // 2])
    assert np.allclose(extract_rois(added, present, ROI)[:, ROI // 2, ROI // 2], 20.0)  # lesion at the ROI centre
    with pytest.raises(ValueError, match="inside"):
        extract_rois(image, [[2, 2]], ROI)


def test_invented_structure_counts_blobs_the_low_dose_does_not_show():
    clean, full_dose = body_phantom(noise_hu=5.0)
    low_dose = full_dose + np.random.default_rng(13).normal(0, 25.0, clean.shape)
    output = ndimage.gaussian_filter(low_dose, 2.0)  # blurs the bone ring and body edge: explained by the input
    count, areas = invented_structure(output, full_dose, low_dose, 5.0, 0.8)
    assert count == 0 and areas == []
    unexplained, _ = invented_structure(output, full_dose, full_dose, 5.0, 0.8, explain_smooth_px=1e-3)
    assert unexplained > 0  # the edge blobs are there; only the smoothed input explains them
    fake = output.copy()
    fake += 150.0 * np.pad(disk_profile(11, 8.0), ((110, 39), (50, 99)))  # +150 HU disk at (115, 55)
    fake -= 150.0 * np.pad(disk_profile(11, 8.0), ((40, 109), (70, 79)))  # -150 HU disk at (45, 75)
    fake[80, 40] += 150.0  # one hot pixel: smoothing leaves < min_area_px above threshold
    count, areas = invented_structure(fake, full_dose, low_dose, 5.0, 0.8)
    assert count == 2
    # the 1 px smoothing spreads a 150 HU edge: it stays above 15 HU out to 1.28 px (normal 10 % point)
    expected_mm2 = math.pi * (4.0 + 1.28) ** 2 * 0.8**2
    assert areas == [pytest.approx(expected_mm2, rel=0.15)] * 2


def test_bad_inputs_are_refused_with_the_option_named():
    present, absent = white_rois(seed=14, n=8)
    with pytest.raises(ValueError, match="ROIs per class"):
        cho_dprime(present[:3], absent, CHANNELS)
    with pytest.raises(ValueError, match="channels"):
        cho_dprime(present, absent, laguerre_gauss_channels(ROI + 1, width_px=4.0))
    with pytest.raises(ValueError, match="hu"):
        insert_lesions(np.zeros((2, 8, 8)), 0.8, (4.0,), (10.0,), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="diameters_mm"):
        insert_lesions(np.zeros((8, 8)), 0.8, (0.0,), (10.0,), 1, np.random.default_rng(0))
    with pytest.raises(AttributeError):
        Lesion(1, 2, 4.0, 10.0).row = 3  # frozen: a recorded lesion cannot drift from the image
