"""Self-supervised adaptation to the scan (``sampling.adapt_steps``, ``cdm4mi.inference.adaptation``): the
recorrupted pairs carry uncorrelated noises of the right level and texture, an adapted copy denoises a phantom it
never saw better than the model it came from, the caller's model is untouched, small scans and unfit models are
skipped or refused, and ``cdm4mi denoise --adapt-steps`` runs it from the command line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cdm4mi.cli.main import main
from cdm4mi.config import load_config
from cdm4mi.data.normalize import HUWindow
from cdm4mi.inference import adaptation
from cdm4mi.inference.adaptation import ALPHA, adapt_to_scan, check_adaptable, recorrupted_pairs
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti
from cdm4mi.simulate.noise_estimate import units_per_hu
from cdm4mi.simulate.phantom import make_ct_phantom
from cdm4mi.simulate.relative_dose import simulate_relative_dose
from cdm4mi.training.module import DiffusionModule

REPO = Path(__file__).resolve().parents[2]
CT_STATE = {"modality": "CT", "normalization": {"name": "hu_window"}, "mode": "2d", "patch_size": [32, 32],
            "metadata": ["noise_level"], "noise_estimator": "ct_flat_regions"}
TINY = ("network.base_channels=8", "network.norm_groups=4", "network.num_head_channels=8", "training.batch_size=8",
        "data.patch_size=[32, 32]")


def tiny_module(*overrides: str, state: dict | None = None) -> DiffusionModule:
    """The recommended recipe's model (configs/ldct_2d.yaml), 8 channels wide, untrained."""
    torch.manual_seed(0)
    config = load_config(REPO / "configs" / "ldct_2d.yaml", [*TINY, *overrides]).model_dump(mode="json")
    return DiffusionModule(config, CT_STATE if state is None else state).eval()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, tuple[float, float], Path]:
    """A 384 x 384 phantom slice (the truth), its noisy version (simulator noise of 20 HU std), the pixel
    spacing, and the noisy slice as a NIfTI file. The plain Hann kernel: the phantom's tissue texture is not a
    scanner's noise to match."""
    truth = make_ct_phantom((1, 384, 384), seed=3)
    spacing = (380 / 384, 380 / 384)
    noisy, _ = simulate_relative_dose(truth, spacing, 0.5, own_noise_hu=20.0, seed=11, kernel_cutoff=1.0)
    axial = np.array([[0, 0, -spacing[1], 0], [0, -spacing[0], 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]])  # (d, h, w) -> RAS
    path = write_nifti(noisy, axial, tmp_path_factory.mktemp("adapt") / "low.nii.gz")
    return truth, noisy, spacing, path


def test_recorrupted_pairs_have_uncorrelated_noises_of_the_input_level(phantom):
    """y1 - x = n + a z and y2 - x = n - z / a: with z of n's covariance their covariance is var n - var z = 0
    (the R2R condition), while y1's noise and the input's own are strongly correlated."""
    truth, noisy, spacing, path = phantom
    normalization = HUWindow().fit(noisy)
    scale = units_per_hu(normalization)
    y1, y2, rows = recorrupted_pairs(noisy, np.array([0]), 0, spacing, normalization, 20.0 * scale, seed=5)
    assert y1.shape == y2.shape == (adaptation.NOISE_DRAWS, 1, 384, 384) and rows.tolist() == [[0]]
    body = truth[0] > -500
    n = (noisy - truth)[0][body]
    z = ((y1.numpy()[:, 0] / scale - noisy[0]) / ALPHA)[:, body]  # the recorruption, back in HU
    assert np.allclose(z, (noisy[0] - y2.numpy()[:, 0] / scale)[:, body] * ALPHA, atol=1e-2)  # one z, both ways
    assert z.std(axis=1) == pytest.approx(np.full(len(z), n.std()), rel=0.08)  # rescaled to the input's level
    first, second = n + ALPHA * z, n - z / ALPHA
    cross = float(np.mean(first * second)) / (first.std() * second.std())
    assert abs(cross) < 0.05  # uncorrelated: a network cannot learn y2's noise from y1
    assert float(np.mean(first * n)) / (first.std() * n.std()) > 0.8
    # FBP texture, not white noise: neighbouring pixels of z are correlated like the input's noise
    z_image = (y1.numpy()[0, 0] / scale - noisy[0]) / ALPHA
    lag = float(np.mean(z_image[:, 1:] * z_image[:, :-1]) / np.mean(z_image**2))
    assert lag > 0.3


def test_adapted_copy_denoises_an_unseen_phantom_better_and_leaves_the_model_alone(phantom):
    truth, noisy, spacing, path = phantom
    module = tiny_module("sampling.adapt_learning_rate=0.003", "sampling.nlm_blend=0")  # the model's own mean
    before = {key: value.clone() for key, value in module.state_dict().items()}
    scan = load_scan(path, modality="CT")
    plain = denoise_scan(module, scan, adapt_steps=0, progress=False)
    adapted = denoise_scan(module, scan, adapt_steps=150, progress=False)
    assert plain.adaptation is None and adapted.adaptation.steps == 150 and adapted.adaptation.seconds > 0
    assert all(torch.equal(value, module.state_dict()[key]) for key, value in before.items())  # the caller's model
    body = truth > -500
    error = {name: math.sqrt(float(np.mean((result.mean - truth)[body] ** 2)))
             for name, result in (("plain", plain), ("adapted", adapted))}
    input_error = math.sqrt(float(np.mean((noisy - truth)[body] ** 2)))
    assert error["adapted"] < 0.85 * min(error["plain"], input_error), (error, input_error)


def test_steps_are_capped_by_passes_over_the_body_and_small_scans_are_not_adapted(phantom, monkeypatch):
    truth, noisy, spacing, path = phantom
    module = tiny_module()
    monkeypatch.setattr(adaptation, "MAX_PASSES", 4)  # 18 steps instead of 1155: the same rule, 60 times faster
    normalization = HUWindow().fit(noisy)
    sigma = 20.0 * units_per_hu(normalization)
    body = int((noisy > adaptation.BODY_HU).sum())
    cap = math.floor(adaptation.MAX_PASSES * body / (8 * 32 * 32))
    adapted, done = adapt_to_scan(module, noisy, spacing, normalization, sigma, {}, 10**6, 1e-4)
    assert done.steps == cap and adapted is not module
    small = noisy[:, 128:176, 128:176]  # 48 x 48: under MIN_BODY_PIXELS of body
    same, skipped = adapt_to_scan(module, small, spacing, HUWindow().fit(small), sigma, {}, 100, 1e-4)
    assert same is module and skipped.steps == 0
    assert skipped.describe() == (f"not adapted to the scan: {int((small > -500).sum())} body pixels, under 4096: "
                                  "too few to learn from without learning their noise")


def test_a_known_dose_removes_only_the_added_noise(phantom, monkeypatch):
    """Dose d: the recorruption has the added noise's std, sigma sqrt(1 - d); full dose adapts nothing; unknown
    dose, the whole noise std. ``denoise_scan`` takes the dose from ``metadata`` though the model does not."""
    truth, noisy, spacing, path = phantom
    module = tiny_module()
    normalization = HUWindow().fit(noisy)
    sigma = 20.0 * units_per_hu(normalization)
    asked = []

    def recorded(*args):
        asked.append(args[5])
        raise RuntimeError("stop")

    monkeypatch.setattr(adaptation, "recorrupted_pairs", recorded)
    for dose in (0.25, None):
        with pytest.raises(RuntimeError, match="stop"):
            adapt_to_scan(module, noisy, spacing, normalization, sigma, {}, 5, 1e-4, dose_fraction=dose)
    assert asked == pytest.approx([sigma * math.sqrt(0.75), sigma])
    same, skipped = adapt_to_scan(module, noisy, spacing, normalization, sigma, {}, 5, 1e-4, dose_fraction=1.0)
    assert same is module and skipped.describe() == ("not adapted to the scan: a full-dose scan (dose_fraction 1): "
                                                     "no added noise")
    with pytest.raises(ValueError, match=r"^dose_fraction: expected a fraction of the full dose in \(0, 1\]"):
        adapt_to_scan(module, noisy, spacing, normalization, sigma, {}, 5, 1e-4, dose_fraction=1.5)
    scan = load_scan(path, modality="CT")
    with pytest.raises(RuntimeError, match="stop"):
        denoise_scan(module, scan, adapt_steps=5, progress=False, metadata={"dose_fraction": "0.5"},
                     input_noise_std=0.01)
    assert asked[-1] == pytest.approx(0.01 * math.sqrt(0.5))


def test_models_it_cannot_serve_are_refused():
    mr = dict(CT_STATE, modality="MR", normalization={"name": "zscore"})
    with pytest.raises(ValueError, match=r"^sampling.adapt_steps: adapts CT denoisers \(HU normalization\) only"):
        check_adaptable(tiny_module(state=mr))
    check_adaptable(tiny_module())
    assert load_config(REPO / "configs" / "ldct_2d.yaml").sampling.adapt_steps == 200  # the recommended recipe


def test_cli_denoise_adapts_and_says_so(phantom, tmp_path, capsys):
    truth, noisy, spacing, path = phantom
    module = tiny_module()
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "cdm4mi": module.model_card()}, checkpoint)
    arguments = ["denoise", "--checkpoint", str(checkpoint), "--input", str(path)]
    assert main([*arguments, "--output", str(tmp_path / "a.nii.gz"), "--adapt-steps", "3"]) == 0
    assert "adapted to the scan: 3 self-supervised steps in" in capsys.readouterr().out
    assert main([*arguments, "--output", str(tmp_path / "b.nii.gz"), "--adapt-steps", "0"]) == 0
    assert "adapted" not in capsys.readouterr().out
    assert load_scan(tmp_path / "a.nii.gz").array.shape == noisy.shape
    assert main([*arguments, "--output", str(tmp_path / "c.nii.gz"), "--adapt-steps", "-1"]) == 2
    assert "--adapt-steps" in capsys.readouterr().err

