"""``sampling.nlm_blend`` / ``--nlm-blend``: the output is (1 - w) x the mean of the draws + w x non-local means of the
input, tuned to the input's estimated noise (``cdm4mi.inference.classical``). The mean of the draws, the spread and
the draws themselves are those of the unblended run; the checkpoint's share is the default and a given one wins."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cli_runs import SMALLEST_UNET
from cohorts import entry, make_nifti_patients, write_manifest
from model_files import CT_STATE, random_checkpoint
from scan_files import CT_SMALL

import cdm4mi
from cdm4mi.cli.main import main
from cdm4mi.evaluation.baselines import nlm_baseline
from cdm4mi.inference.classical import nlm_filter
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu

TINY = ("network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16", *SMALLEST_UNET,
        "sampling.steps=2", "sampling.warm_start_factor=2", "data.noise_estimator=ct_flat_regions")  # as ldct_2d.yaml


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("blend")
    return {"plain": random_checkpoint(root / "plain.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY),
            "blended": random_checkpoint(root / "blended.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY,
                                         "sampling.nlm_blend=0.3")}


def test_the_output_is_the_share_of_nlm_of_the_input_beside_the_mean_of_the_draws(checkpoints):
    model = cdm4mi.load_denoiser(checkpoints["plain"], device="cpu")
    scan = load_scan(CT_SMALL)  # a real CT slice: its soft tissue gives the noise estimate NLM is tuned to
    alone = model.denoise(scan, samples=2, seed=5)
    blended = model.denoise(scan, samples=2, seed=5, nlm_blend=0.5)
    assert alone.nlm_blend == 0 and alone.posterior_mean is None
    assert blended.nlm_blend == 0.5
    np.testing.assert_array_equal(blended.posterior_mean, alone.mean)  # the same draws
    np.testing.assert_array_equal(blended.std, alone.std)
    sigma = blended.input_noise_scan
    assert sigma == pytest.approx(estimate_ct_noise_hu(scan.array), rel=1e-3)  # the model's estimate, in HU
    expected = 0.5 * alone.mean + 0.5 * nlm_filter(scan.array, sigma_hu=sigma)
    np.testing.assert_allclose(blended.mean, expected, atol=1e-3)
    assert blended.mean.dtype == np.float32 and blended.mean.shape == scan.array.shape
    # the classical part is the benchmarks' NLM baseline, and it does smooth this scan
    np.testing.assert_array_equal(nlm_filter(scan.array, sigma_hu=sigma), nlm_baseline(scan.array, sigma_hu=sigma))
    assert np.abs(expected - alone.mean).max() > 1.0
    nlm_only = model.denoise(scan.array[0], seed=5, nlm_blend=1.0)  # w = 1: NLM alone, as a 2D array in and out
    np.testing.assert_allclose(nlm_only, nlm_filter(scan.array[0], sigma_hu=sigma), atol=1e-3)


def test_the_checkpoint_share_is_the_default_and_a_given_share_wins(checkpoints, tmp_path, capsys):
    model = cdm4mi.load_denoiser(checkpoints["blended"], device="cpu")
    scan = load_scan(CT_SMALL)
    default = model.denoise(scan, samples=2, seed=1)
    assert default.nlm_blend == pytest.approx(0.3)
    np.testing.assert_allclose(default.mean, 0.7 * default.posterior_mean
                               + 0.3 * nlm_filter(scan.array, sigma_hu=default.input_noise_scan), atol=1e-3)
    off = model.denoise(scan, samples=2, seed=1, nlm_blend=0)
    assert off.posterior_mean is None
    np.testing.assert_array_equal(off.mean, default.posterior_mean)
    # the command: a given share wins there too, it says what it did, and its output is the API's
    assert main(["denoise", "--checkpoint", str(checkpoints["blended"]), "--input", str(CT_SMALL), "--device", "cpu",
                 "--seed", "1", "--output", str(tmp_path / "out.nii.gz"), "--nlm-blend", "0.6"]) == 0
    assert "blended: 40% the model's mean, 60% non-local means of the input (sigma " in capsys.readouterr().out
    np.testing.assert_allclose(load_scan(tmp_path / "out.nii.gz").array, model.denoise(scan, seed=1, nlm_blend=0.6),
                               atol=1e-3)


def test_a_model_at_a_fixed_voxel_size_blends_on_its_grid_and_returns_both_means_on_the_scans(tmp_path):
    state = {**CT_STATE, "mode": "2d", "spacing_mm": [2.0, 2.0, 2.0]}
    path = random_checkpoint(tmp_path / "spaced.ckpt", "ldct_2d_concat.yaml", state, *TINY)
    model = cdm4mi.load_denoiser(path, device="cpu")
    volume = np.random.default_rng(0).normal(40, 20, (2, 32, 32)).astype(np.float32)
    result = model.denoise(volume, spacing_mm=(2, 1, 1), samples=2, nlm_blend=0.5)
    assert result.mean.shape == result.posterior_mean.shape == result.std.shape == (2, 32, 32)
    assert not np.array_equal(result.mean, result.posterior_mean)


@pytest.mark.parametrize("share", [-0.1, 1.5, True, "0.5"])
def test_a_share_outside_0_to_1_is_refused(checkpoints, share):
    model = cdm4mi.load_denoiser(checkpoints["plain"], device="cpu")
    with pytest.raises(ValueError, match="nlm_blend: expected a share in \\[0, 1\\] or None"):
        model.denoise(np.zeros((8, 8)), nlm_blend=share)


def test_the_option_outside_0_to_1_is_one_line(checkpoints, tmp_path, capsys):
    status = main(["denoise", "--checkpoint", str(checkpoints["plain"]), "--input", str(CT_SMALL), "--output",
                   str(tmp_path / "out.nii.gz"), "--nlm-blend", "2"])
    err = capsys.readouterr().err
    assert status == 2 and err.strip().splitlines() == [
        "cdm4mi denoise: error: argument --nlm-blend: expected a number in [0, 1], got '2'; see cdm4mi denoise --help"], err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_says_and_records_the_share_of_nlm_in_the_model_column(checkpoints, tmp_path, capsys):
    """The "model" column of ``cdm4mi evaluate`` is the blended output: the report says so and summary.json keeps the
    share, so a reader never takes a blend for the model alone."""
    make_nifti_patients(tmp_path / "data", count=2, shape=(2, 32, 32))
    manifest = write_manifest(tmp_path / "data" / "manifest.json",
                              [entry("P00", "case00", "test"), entry("P01", "case01", "train")])
    base = ["evaluate", "--checkpoint", str(checkpoints["plain"]), "--manifest", str(manifest), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "blended"), "--nlm-blend", "0.5"]) == 0
    assert "model: 50% the model's posterior mean, 50% non-local means of the input" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "alone")]) == 0
    assert "non-local means of the input" not in capsys.readouterr().out
    shares = {name: json.loads((tmp_path / name / "summary.json").read_text())["model_nlm_blend"]
              for name in ("blended", "alone")}
    assert shares == {"blended": 0.5, "alone": 0.0}
    psnr = {name: [row for row in csv.DictReader((tmp_path / name / "metrics.csv").read_text().splitlines())
                   if row["method"] == "model"][0]["psnr"] for name in ("blended", "alone")}
    assert psnr["blended"] != psnr["alone"]


def test_padding_outside_the_field_of_view_keeps_its_value(checkpoints):
    """Many scanners store -2000 or -3024 HU outside the reconstructed circle. The network sees it clipped to its
    window's floor (-1024), so without a passthrough the mean came back at -1024 there and a blend with NLM at
    about -2000: a value that is neither the file's padding nor air."""
    model = cdm4mi.load_denoiser(checkpoints["plain"], device="cpu")
    scan = load_scan(CT_SMALL)
    rows, cols = np.ogrid[:scan.array.shape[1], :scan.array.shape[2]]
    outside = np.broadcast_to((rows - 63.5) ** 2 + (cols - 63.5) ** 2 > 60**2, scan.array.shape)
    padded = scan.array.copy()
    padded[outside] = -3024.0
    padded[0, 64, 64] = -1100.0  # air seen through noise, just below the floor: still denoised
    result = model.denoise(padded, samples=2, seed=3, nlm_blend=0.5)
    for image in (result.mean, result.posterior_mean):
        np.testing.assert_array_equal(image[outside], -3024.0)
        assert np.abs(image[~outside] - padded[~outside]).max() > 1.0  # the inside is still the model's
        assert image[0, 64, 64] != -1100.0
    assert (result.std[outside] == 0).all() and (result.std[~outside] > 0).all()
    plain = model.denoise(scan, samples=2, seed=3, nlm_blend=0.5)  # a scan without padding: nothing passes through
    assert not np.isin(plain.mean, scan.array).any()
