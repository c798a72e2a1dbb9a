"""The Python API (``cdm4mi.load_denoiser``, ``load_scan``, ``save_scan``; ``cdm4mi.inference.scan_denoiser``): the
README's example run as written, arrays, paths and scans denoised as ``cdm4mi denoise`` denoises them, the
uncertainty of several draws, the model card, refusals, and an ``import cdm4mi`` that loads nothing heavy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_runs import SMALLEST_UNET
from model_files import CT_STATE, REPO, random_checkpoint
from scan_files import CT_SMALL, write_ct_series

import cdm4mi
from cdm4mi.cli.main import main
from cdm4mi.inference.denoise import DenoiseResult, denoise_scan
from cdm4mi.io.read import load_scan
from cdm4mi.training.checkpoint import load_module

TINY = ("network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16", *SMALLEST_UNET,
        "sampling.steps=2", "sampling.warm_start_factor=2")  # factor 2: fresh noise is drawn, so seeds matter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("api") / "ct.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY)


@pytest.fixture(scope="module")
def model(checkpoint):
    return cdm4mi.load_denoiser(checkpoint, device="cpu")


def readme_block(heading: str) -> str:
    """The first ```python block under ``heading`` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_the_readme_example_runs_as_written(checkpoint, tmp_path, monkeypatch):
    code = readme_block("Python API")
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("import")]) == 3
    (tmp_path / "runs" / "site" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "site" / "checkpoints" / "last.ckpt").write_bytes(checkpoint.read_bytes())
    write_ct_series(tmp_path / "new_scan", n=3)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    written = load_scan(tmp_path / "denoised")
    expected = load_module(checkpoint)  # the command, on the same scan: same seed, same array (DICOM rounds to 1 HU)
    reference = denoise_scan(expected, load_scan(tmp_path / "new_scan"), seed=0, progress=False).mean
    assert written.array.shape == (3, 128, 128)
    assert np.abs(written.array - reference).max() <= 0.5 + 1e-3
    assert np.abs(written.array - namespace["scan"].array).max() > 1  # the (random) model changed the scan


def test_an_array_a_path_and_a_scan_give_the_arrays_of_cdm4mi_denoise(model, checkpoint, tmp_path):
    scan = load_scan(CT_SMALL)
    nifti = tmp_path / "ct.nii.gz"
    cdm4mi.save_scan(scan.array, scan, nifti)
    assert main(["denoise", "--checkpoint", str(checkpoint), "--input", str(nifti), "--output",
                 str(tmp_path / "cli.nii.gz"), "--device", "cpu", "--seed", "3"]) == 0
    by_command = np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj)
    from_path = model.denoise(nifti, seed=3)
    assert from_path.dtype == np.float32 and from_path.shape == scan.array.shape == (1, 128, 128)
    np.testing.assert_array_equal(np.asarray(nib.load(cdm4mi.save_scan(from_path, load_scan(nifti),
                                                                        tmp_path / "api.nii.gz")).dataobj), by_command)
    np.testing.assert_array_equal(model.denoise(scan, seed=3), from_path)
    np.testing.assert_array_equal(model.denoise(scan.array, seed=3), from_path)  # 1 mm voxels: this model has none
    slice_2d = model.denoise(torch.from_numpy(scan.array[0]), seed=3)
    np.testing.assert_array_equal(slice_2d, from_path[0])
    assert not np.array_equal(model.denoise(scan, seed=4), from_path)


def test_several_samples_give_a_mean_and_an_uncertainty(model):
    scan = load_scan(CT_SMALL)
    result = model.denoise(scan.array[0], samples=3, seed=1)
    assert isinstance(result, DenoiseResult) and result.mean.shape == result.std.shape == (128, 128)
    assert np.isfinite(result.std).all() and result.std.mean() > 0
    single = model.denoise(scan.array[0], samples=1, seed=1)
    assert not np.array_equal(result.mean, single)  # the mean of three draws, not the first


def test_the_card_says_what_the_model_is(model, checkpoint):
    card = model.card
    assert card["task"] == "denoise" and card["modality"] == "CT" and card["normalization"] == {"name": "hu_window"}
    assert card["data_mode"] == "2d" and model.modality == "CT" and model.device.type == "cpu"
    card["modality"] = "MR"  # a copy: the model is not changed through it
    assert model.card["modality"] == "CT"


def test_load_scan_and_the_api_names_are_the_library_functions():
    from cdm4mi.inference.scan_denoiser import ScanDenoiser, load_denoiser
    from cdm4mi.io.read import Scan

    assert cdm4mi.load_scan is load_scan and cdm4mi.load_denoiser is load_denoiser
    assert cdm4mi.ScanDenoiser is ScanDenoiser and cdm4mi.Scan is Scan
    assert {"load_denoiser", "load_scan", "save_scan"} <= set(dir(cdm4mi)) and "load_denoiser" in cdm4mi.__all__
    with pytest.raises(AttributeError, match="no attribute 'denoise'"):
        cdm4mi.denoise  # noqa: B018


def test_import_cdm4mi_loads_no_heavy_library():
    script = ("import sys, cdm4mi\n"
              "print(sorted(m for m in ('torch', 'monai', 'lightning', 'nibabel', 'pydicom') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.denoise(np.zeros((2, 3, 4, 5))), "expected a \\[D, H, W\\] or \\[H, W\\] array"),
    (lambda m: m.denoise(np.full((8, 8), np.nan)), "64 voxels of the array are NaN or Inf"),
    (lambda m: m.denoise(np.zeros((8, 8), dtype=complex)), "real-valued"),
    (lambda m: m.denoise([[0.0]]), "got list"),
    (lambda m: m.denoise(np.zeros((8, 8)), samples=0), "samples: expected a whole number >= 1"),
    (lambda m: m.denoise(np.zeros((8, 8)), steps=0), "steps: expected a whole number >= 1"),
    (lambda m: m.denoise(np.zeros((8, 8)), t_start=10**6), "--t-start: 1000000 lies beyond"),
    (lambda m: m.denoise(np.zeros((8, 8)), metadata={"kvp": 120}), "trained with no metadata"),
    (lambda m: m.denoise(np.zeros((8, 8)), spacing_mm=(1, 0, 1)), "three positive voxel sizes"),
    (lambda m: m.denoise("absent_scan.nii.gz"), "no such file"),
])
def test_bad_arguments_are_refused_naming_them(model, call, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call(model)


def test_a_model_at_a_fixed_voxel_size_needs_the_array_spacing(tmp_path):
    state = {**CT_STATE, "mode": "2d", "spacing_mm": [2.0, 2.0, 2.0]}
    path = random_checkpoint(tmp_path / "spaced.ckpt", "ldct_2d_concat.yaml", state, *TINY)
    model = cdm4mi.load_denoiser(path, device="cpu")
    volume = np.random.default_rng(0).normal(40, 20, (2, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"spacing_mm: the model works at \(2.0, 2.0, 2.0\) mm"):
        model.denoise(volume)
    assert model.denoise(volume, spacing_mm=(2, 1, 1)).shape == (2, 32, 32)  # resampled to 2 mm and back


def test_a_generative_model_and_a_missing_file_are_refused(tmp_path):
    toy = random_checkpoint(tmp_path / "toy.ckpt", "toy2d.yaml", None)
    with pytest.raises(ValueError, match="trained to generate samples"):
        cdm4mi.load_denoiser(toy, device="cpu")
    with pytest.raises(ValueError, match="file not found"):
        cdm4mi.load_denoiser(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="device: expected cpu, cuda"):
        cdm4mi.load_denoiser(toy, device="gpu")
