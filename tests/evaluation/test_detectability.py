"""Lesions in volumes, paired ROIs, the contrast a method keeps, and which lesion classes it loses."""

import numpy as np
import pytest
from scipy import ndimage

from cdm4mi.evaluation.detectability import (
    LesionStudy,
    classes_lost,
    contrast_kept,
    detectability,
    insert_volume_lesions,
    lesion_rois,
    pool_rois,
    roi_size_px,
)
from cdm4mi.evaluation.observers import disk_profile

PIXEL_MM = 1.0


def body_volume(slices: int = 3, size: int = 96) -> np.ndarray:
    """[slices, size, size] HU: a 40 HU ellipse of soft tissue in -1000 HU air."""
    rows, cols = np.mgrid[:size, :size] - size / 2
    body = np.where((rows / 42) ** 2 + (cols / 44) ** 2 < 1, 40.0, -1000.0)
    return np.repeat(body[None], slices, axis=0)


def test_volume_lesions_go_into_the_chosen_slices_only():
    full = body_volume(4)
    study = LesionStudy(diameters_mm=(4.0, 8.0), contrasts_hu=(20.0,), per_class=3, max_slices=2)
    assert study.slices(4) == [0, 3] and LesionStudy(max_slices=24).slices(4) == [0, 1, 2, 3]
    reference, lesions = insert_volume_lesions(full, PIXEL_MM, study.diameters_mm, study.contrasts_hu,
                                               study.per_class, np.random.default_rng(0), study.slices(4))
    assert [len(placed) for placed in lesions] == [6, 0, 0, 6]
    assert np.array_equal(reference[1], full[1]) and np.array_equal(reference[2], full[2])
    added = reference[0] - full[0]
    expected = sum(lesion.contrast_hu * np.pi * (lesion.diameter_mm / 2) ** 2 for lesion in lesions[0])
    assert added.sum() == pytest.approx(expected, rel=0.04)  # each disk carries its area x contrast
    with pytest.raises(ValueError, match="LesionStudy"):
        LesionStudy(per_class=0)


def test_contrast_kept_is_one_for_identity_and_the_disk_overlap_for_a_blur():
    full = body_volume(2)
    with_lesions, lesions = insert_volume_lesions(full, PIXEL_MM, (6.0,), (30.0,), 4, np.random.default_rng(1))
    noise = np.random.default_rng(2).normal(0, 20.0, full.shape)
    assert contrast_kept(with_lesions + noise, full + noise, lesions, PIXEL_MM) == pytest.approx(1.0, abs=1e-9)

    def blur(volume):
        return ndimage.gaussian_filter(volume, (0, 1.5, 1.5))
    kept = contrast_kept(blur(with_lesions), blur(full), lesions, PIXEL_MM)
    size = roi_size_px(6.0, PIXEL_MM)
    disk = disk_profile(size, 6.0)
    padded = np.pad(disk, 10)
    expected = np.sum(ndimage.gaussian_filter(padded, 1.5)[10:-10, 10:-10] * disk) / np.sum(disk * disk)
    assert kept == pytest.approx(expected, rel=0.02) and 0.5 < kept < 0.95
    assert contrast_kept(full, full, [[], []], PIXEL_MM) is None


def test_paired_rois_read_the_lesion_free_images_at_the_same_centres():
    full = body_volume(2)
    with_lesions, lesions = insert_volume_lesions(full, PIXEL_MM, (5.0,), (25.0, 50.0), 3, np.random.default_rng(3))
    noise = np.random.default_rng(4).normal(0, 10.0, full.shape)
    outputs = {"full_dose": [with_lesions], "noisy": [with_lesions + noise]}
    absent = {"full_dose": [full], "noisy": [full + noise]}
    pooled = lesion_rois(full, lesions, PIXEL_MM, outputs, seed=0, absent_outputs=absent)
    assert set(pooled) == {(m, 5.0, c) for m in ("full_dose", "noisy") for c in (25.0, 50.0)}
    present, background = pooled[("noisy", 5.0, 50.0)]
    count = sum(lesion.contrast_hu == 50.0 for placed in lesions for lesion in placed)
    assert present.shape == background.shape == (count, 17, 17) and present.dtype == np.float32  # disk over 8 px
    # same noise in both: the difference at the centre is the disk's contrast, the background the noise
    assert np.allclose((present - background)[:, 8, 8], 50.0, atol=1e-3)
    unpaired = lesion_rois(full, lesions, PIXEL_MM, outputs, seed=0)
    assert unpaired[("noisy", 5.0, 50.0)][1].shape[0] <= count  # free soft tissue elsewhere, fewer if crowded
    twice = pool_rois(pool_rois({}, pooled), pooled)
    assert twice[("noisy", 5.0, 25.0)][0].shape[0] == 2 * pooled[("noisy", 5.0, 25.0)][0].shape[0]


def test_a_median_filter_erases_small_lesions_and_loses_their_class():
    full = body_volume(6, 128)
    rng = np.random.default_rng(5)
    with_lesions, lesions = insert_volume_lesions(full, PIXEL_MM, (3.0,), (60.0,), 8, rng)
    noise = rng.normal(0, 20.0, full.shape)

    def median(volume):  # a 7x7 median ignores a 3-px disk: noise down, lesion gone
        return ndimage.median_filter(volume, size=(1, 7, 7))
    outputs = {"low_dose_input": [with_lesions + noise], "median": [median(with_lesions + noise)]}
    absent = {"low_dose_input": [full + noise], "median": [median(full + noise)]}
    rows = detectability(lesion_rois(full, lesions, PIXEL_MM, outputs, 0, absent_outputs=absent), seed=0, n_boot=50)
    cho = {row["method"]: row["cho"] for row in rows}
    assert cho["low_dose_input"][0] > 2.0  # 3 mm, 60 HU in 20 HU white noise: visible
    assert cho["median"][2] < cho["low_dose_input"][0]
    assert classes_lost(rows, "median") == [(3.0, 60.0)]
    assert classes_lost(rows, "low_dose_input") == [] and classes_lost(rows, "model") is None
    assert contrast_kept(outputs["median"][0], absent["median"][0], lesions, PIXEL_MM) < 0.3


def test_a_dprime_that_cannot_be_computed_counts_as_lost():
    rows = [{"method": "low_dose_input", "lesion_mm": 5.0, "lesion_hu": 20.0, "cho": (1.0, 0.6, 1.4)},
            {"method": "flat", "lesion_mm": 5.0, "lesion_hu": 20.0, "cho": (float("nan"),) * 3},
            {"method": "kept", "lesion_mm": 5.0, "lesion_hu": 20.0, "cho": (0.8, 0.5, 1.1)}]
    assert classes_lost(rows, "flat") == [(5.0, 20.0)] and classes_lost(rows, "kept") == []
