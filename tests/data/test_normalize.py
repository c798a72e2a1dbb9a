"""Normalizations invert exactly, store their parameters, and compose as MONAI dictionary transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from cdm4mi.data.normalize import (
    HUWindow,
    IntensityNormalized,
    PercentileScaling,
    ZScore,
    normalization_from_dict,
)


def _mri(seed: int = 0) -> np.ndarray:
    """A synthetic T1-like volume: zero background, tissue around 400, a few bright spikes."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((12, 16, 16), np.float32)
    volume[2:10, 3:13, 3:13] = rng.normal(400, 60, (8, 10, 10))
    volume[5, 5, 5] = 5000
    return volume


def test_hu_window_defaults_and_round_trip():
    window = HUWindow()
    hu = np.linspace(-1024, 3071, 4096)
    units = window.forward(hu)
    assert units[0] == pytest.approx(-2.048) and units[-1] == pytest.approx(6.142)
    assert window.forward(np.array([0.0]))[0] == 0.0  # water
    assert window.noise_in_units(25.0) == pytest.approx(0.05)  # quarter-dose noise stays visible
    np.testing.assert_allclose(window.inverse(units), hu, atol=1e-9)
    tensor = torch.tensor(hu, dtype=torch.float32)
    torch.testing.assert_close(window.inverse(window.forward(tensor)), tensor, atol=3e-4, rtol=0)


def test_hu_window_clipping_is_the_only_loss():
    window = HUWindow(hu_min=-160, hu_max=240, center_hu=40, scale_hu=200)
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 1500.0])
    np.testing.assert_allclose(window.forward(hu), [-1.0, -1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(window.inverse(window.forward(hu)), [-160, -160, 40, 240, 240])
    np.testing.assert_allclose(window.inverse(np.array([1.5])), [340.0])  # inverse itself does not clip


@pytest.mark.parametrize("kwargs, message", [
    ({"hu_min": 100, "hu_max": 100}, "hu_min must be below hu_max"),
    ({"scale_hu": 0}, "scale_hu must be positive"),
    ({"center_hu": float("nan")}, "must be finite"),
])
def test_hu_window_validates_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HUWindow(**kwargs)


def test_percentile_round_trip_and_stats():
    volume = _mri()
    scaling = PercentileScaling().fit(volume)
    assert scaling.low == pytest.approx(np.percentile(volume, 0.5))
    assert scaling.high == pytest.approx(np.percentile(volume, 99.5))
    units = scaling.forward(volume)
    assert np.mean((units >= 0) & (units <= 1)) >= 0.99
    np.testing.assert_allclose(scaling.inverse(units), volume, atol=1e-3)

    tissue = PercentileScaling(lower_percentile=1, upper_percentile=99, nonzero=True).fit(torch.from_numpy(volume))
    assert tissue.low == pytest.approx(np.percentile(volume[volume != 0], 1), rel=1e-4)
    clipped = PercentileScaling(clip=True).fit(volume).forward(volume)
    assert clipped.max() == 1.0 and clipped.min() == 0.0


def test_zscore_round_trip():
    volume = _mri(1)
    zscore = ZScore().fit(volume)
    units = zscore.forward(volume)
    assert float(units.mean()) == pytest.approx(0.0, abs=1e-5) and float(units.std()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(zscore.inverse(units), volume, atol=1e-3)
    foreground = ZScore(nonzero=True).fit(torch.from_numpy(volume))
    assert foreground.mean == pytest.approx(float(volume[volume != 0].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="constant image"):
        ZScore().fit(np.full((4, 4), 7.0))


def test_unfitted_mri_normalization_refuses():
    with pytest.raises(ValueError, match="call fit"):
        PercentileScaling().forward(_mri())
    with pytest.raises(ValueError, match="call fit"):
        ZScore().inverse(_mri())


@pytest.mark.parametrize("normalization", [
    HUWindow(hu_min=-1000, hu_max=1000, center_hu=-100, scale_hu=400),
    PercentileScaling(lower_percentile=1, upper_percentile=99, nonzero=True).fit(_mri()),
    ZScore().fit(_mri()),
    ZScore(),
], ids=["hu_window", "percentile", "zscore", "zscore-unfitted"])
def test_to_dict_from_dict_round_trip(normalization):
    stored = json.loads(json.dumps(normalization.to_dict()))  # survives a JSON/YAML config or checkpoint
    rebuilt = normalization_from_dict(stored)
    assert rebuilt == normalization and type(rebuilt).from_dict(stored) == normalization


def test_from_dict_validates():
    with pytest.raises(ValueError, match=r"normalization name must be one of \['hu_window', 'percentile', 'zscore'\]"):
        normalization_from_dict({"name": "minmax"})
    with pytest.raises(ValueError, match=r"unknown hu_window normalization options \['width'\]"):
        normalization_from_dict({"name": "hu_window", "width": 400})
    with pytest.raises(ValueError, match="expected 'zscore'"):
        ZScore.from_dict({"name": "percentile"})


def test_dictionary_transform_inverts_each_item():
    volume = _mri(2)
    transform = IntensityNormalized(["noisy", "clean"], PercentileScaling(), stats_key="noisy")
    noisy = volume + np.random.default_rng(3).normal(0, 20, volume.shape).astype(np.float32)
    out = transform({"noisy": MetaTensor(noisy[None]), "clean": volume[None]})
    fitted = PercentileScaling().fit(noisy[None])
    # Both items use the noisy image's statistics, the only ones known at inference.
    torch.testing.assert_close(out["clean"].as_tensor(), torch.from_numpy(fitted.forward(volume[None])))
    back = transform.inverse(out)
    np.testing.assert_allclose(back["noisy"].numpy(), noisy[None], atol=1e-3)
    np.testing.assert_allclose(back["clean"].numpy(), volume[None], atol=1e-3)


def test_invertd_maps_a_prediction_back_to_hu():
    pipeline = Compose([IntensityNormalized("image", HUWindow())])
    hu = torch.linspace(-1024, 3071, 64).reshape(1, 4, 4, 4)
    data = pipeline({"image": MetaTensor(hu)})
    data["pred"] = MetaTensor(data["image"].as_tensor() * 1.0)  # a model output in model units
    inverted = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=False)(data)
    torch.testing.assert_close(inverted["pred"].as_tensor(), hu, atol=5e-4, rtol=0)
    with pytest.raises(ValueError, match="normalization must be one of"):
        IntensityNormalized("image", {"name": "hu_window"})
