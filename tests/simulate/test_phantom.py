"""Synthetic CT patients: tissue HU ranges, texture, variation across seeds and along z, sizes."""

import time

import numpy as np
import pytest
from scipy import ndimage

from cdm4mi.simulate.phantom import make_ct_phantom

TISSUE_HU = {"lung": (-950, -650), "fat": (-160, -40), "soft": (0, 100), "contrast": (130, 230), "bone": (300, 2000)}


@pytest.fixture(scope="module")
def patients() -> list[np.ndarray]:
    return [make_ct_phantom((16, 128, 128), seed=seed) for seed in range(4)]


def _fraction(volume: np.ndarray, tissue: str) -> float:
    low, high = TISSUE_HU[tissue]
    body = volume[volume > -960]
    return float(np.mean((body >= low) & (body < high)))


def test_shape_dtype_and_air_outside(patients) -> None:
    for volume in patients:
        assert volume.shape == (16, 128, 128) and volume.dtype == np.float32
        assert np.all(np.isfinite(volume))
        np.testing.assert_array_equal(volume[:, :4, :4], -1000.0)  # corners are air
        assert 0.2 < np.mean(volume > -960) < 0.7  # body fills a plausible part of a 380 mm field


@pytest.mark.parametrize(
    "tissue, low, high",
    [("lung", 0.03, 0.45), ("fat", 0.1, 0.55), ("soft", 0.2, 0.6), ("contrast", 0.01, 0.08), ("bone", 0.01, 0.06)],
)
def test_tissue_fractions_of_the_body(patients, tissue: str, low: float, high: float) -> None:
    for volume in patients:
        assert low < _fraction(volume, tissue) < high


@pytest.mark.parametrize("tissue, low, high", [("lung", -880, -780), ("fat", -115, -75), ("soft", 40, 65)])
def test_tissue_median_hu(patients, tissue: str, low: float, high: float) -> None:
    lo, hi = TISSUE_HU[tissue]
    for volume in patients:
        assert low < np.median(volume[(volume >= lo) & (volume < hi)]) < high


def test_soft_tissue_carries_texture(patients) -> None:
    for volume in patients:
        core = ndimage.binary_erosion((volume > 0) & (volume < 100), iterations=3)
        detail = volume - ndimage.gaussian_filter(volume, (0, 2, 2))
        assert 3 < detail[core].std() < 20  # HU: visible texture, not noise-like grain


def test_seeds_are_patients_and_reproducible(patients) -> None:
    np.testing.assert_array_equal(patients[0], make_ct_phantom((16, 128, 128), seed=0))
    body = (patients[0] > -960) | (patients[1] > -960)
    between_patients = np.abs(patients[0] - patients[1])[body].mean()
    assert between_patients > 100
    adjacent_slices = np.mean([np.abs(np.diff(v, axis=0))[:, (v > -960).any(0)].mean() for v in patients])
    assert adjacent_slices < 0.15 * between_patients  # structure changes slowly along z


def test_anatomy_is_laid_out_in_mm() -> None:
    fine = make_ct_phantom((2, 256, 256), seed=3).reshape(2, 128, 2, 128, 2).mean((2, 4))
    coarse = make_ct_phantom((2, 128, 128), seed=3)
    other = make_ct_phantom((2, 128, 128), seed=4)
    body = (coarse > -960) | (other > -960)
    assert np.abs(fine - coarse)[body].mean() < 0.2 * np.abs(other - coarse)[body].mean()


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 96, 160), (1, 512, 512)])
def test_any_matrix_size(shape: tuple[int, int, int]) -> None:
    volume = make_ct_phantom(shape, seed=0)
    assert volume.shape == shape and 0.2 < np.mean(volume > -960) < 0.7


def test_fast_enough() -> None:
    start = time.process_time()
    make_ct_phantom((16, 128, 128), seed=11)
    assert time.process_time() - start < 2.0  # CPU seconds; ~0.1 s on 2 idle cores


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"shape": (128, 128)}, "shape"),
        ({"shape": (2, 4, 4)}, "shape"),
        ({"spacing_mm": (1.0, -1.0, 1.0)}, "spacing_mm"),
    ],
)
def test_invalid_options_raise(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        make_ct_phantom(**kwargs)
