"""``cdm4mi export`` and ``cdm4mi info``: a safetensors file and its card, a MONAI bundle that MONAI's own runner
(``python -m monai.bundle run``) executes on a NIfTI and that gives what ``cdm4mi denoise`` gives, ``info`` on a
checkpoint, an export and a bundle; ``--overwrite`` on a bundle folder. Bad models and outputs are in the bad-input
corpus (tests/bad_inputs_export.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_runs import SMALLEST_UNET, cli
from model_files import CT_STATE, random_checkpoint
from scan_files import CT_SMALL

import cdm4mi
from cdm4mi.atomic import RECORD
from cdm4mi.cli import export as export_command
from cdm4mi.cli.main import main
from cdm4mi.inference import export
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti

TINY = ("network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16", *SMALLEST_UNET,
        "sampling.steps=2", "sampling.warm_start_factor=2")  # factor 2: fresh noise is drawn, so seeds matter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("export") / "ct.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY)


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> Path:
    """pydicom's CT_small.dcm as a NIfTI file (HU)."""
    scan = load_scan(CT_SMALL)
    return write_nifti(scan.array, scan.affine, tmp_path_factory.mktemp("scan") / "ct_small.nii.gz")


def test_the_cli_offers_the_formats_the_library_writes():
    assert export_command.FORMATS == export.FORMATS


def test_safetensors_export_writes_weights_and_card_and_info_prints_it(checkpoint, tmp_path, capsys):
    out = cli(capsys, "export", checkpoint, "--format", "safetensors", tmp_path / "site_ct.safetensors",
              "--name", "site CT denoiser")
    assert "exported site CT denoiser as safetensors" in out
    card = json.loads((tmp_path / "site_ct.card.json").read_text())
    assert card["name"] == "site CT denoiser" and card["format"] == "cdm4mi-model-card/1"
    assert {"task", "modality", "normalization", "training_data", "metrics", "version"} <= set(card)
    assert card["task"] == "denoise" and card["modality"] == "CT" and card["version"] == cdm4mi.__version__
    printed = json.loads(cli(capsys, "info", tmp_path / "site_ct.safetensors", "--json"))
    assert printed == card
    lines = cli(capsys, "info", "--checkpoint", checkpoint).splitlines()
    assert "task: denoise" in lines and "modality: CT" in lines and "  name: unet" in lines
    assert "normalization:" in lines and "  name: hu_window" in lines


def test_the_export_denoises_as_the_checkpoint_does(checkpoint, nifti, tmp_path, capsys):
    cli(capsys, "export", "--checkpoint", checkpoint, "--format", "safetensors", "--out", tmp_path / "m.safetensors")
    for model, name in ((checkpoint, "ckpt.nii.gz"), (tmp_path / "m.safetensors", "export.nii.gz")):
        cli(capsys, "denoise", "--checkpoint", model, "--input", nifti, "--output", tmp_path / name, "--device", "cpu")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "ckpt.nii.gz").dataobj),
                                  np.asarray(nib.load(tmp_path / "export.nii.gz").dataobj))
    np.testing.assert_array_equal(cdm4mi.load_denoiser(tmp_path / "m.safetensors", device="cpu").denoise(nifti),
                                  np.asarray(nib.load(tmp_path / "ckpt.nii.gz").dataobj))


def run_bundle(bundle: Path, *overrides: str) -> subprocess.CompletedProcess:
    """MONAI's own runner on ``bundle``, as its README says (cdm4mi is installed in this Python)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_monai_runs_the_bundle_and_gets_what_cdm4mi_denoise_writes(checkpoint, nifti, tmp_path, capsys):
    bundle = tmp_path / "site_ct_bundle"
    cli(capsys, "export", checkpoint, "--format", "monai-bundle", bundle)
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        RECORD, "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.safetensors"]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["cdm4mi_card"]["task"] == "denoise" and metadata["network_data_format"]["inputs"]["image"][
        "modality"] == "CT" and metadata["required_packages_version"]["cdm4mi"] == cdm4mi.__version__
    done = run_bundle(bundle, "--input_path", str(nifti), "--output_path", str(tmp_path / "bundle.nii.gz"),
                      "--device", "cpu", "--seed", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", nifti, "--output", tmp_path / "cli.nii.gz",
        "--device", "cpu", "--seed", "3")
    by_monai, by_cdm4mi = nib.load(tmp_path / "bundle.nii.gz"), nib.load(tmp_path / "cli.nii.gz")
    np.testing.assert_allclose(by_monai.affine, by_cdm4mi.affine)
    difference = np.abs(np.asarray(by_monai.dataobj) - np.asarray(by_cdm4mi.dataobj)).max()
    assert difference <= 1e-4, f"{difference} HU"
    assert np.abs(np.asarray(by_cdm4mi.dataobj) - np.asarray(nib.load(nifti).dataobj)).max() > 1  # it did something
    cli(capsys, "denoise", "--checkpoint", bundle, "--input", nifti, "--output", tmp_path / "seed4.nii.gz",
        "--device", "cpu", "--seed", "4")  # a bundle folder is a model too; another seed, another draw
    assert not np.array_equal(np.asarray(nib.load(tmp_path / "seed4.nii.gz").dataobj), np.asarray(by_cdm4mi.dataobj))
    assert json.loads(cli(capsys, "info", bundle, "--json")) == metadata["cdm4mi_card"]


def test_a_bundle_run_without_input_path_says_what_to_give(checkpoint, tmp_path, capsys):
    from cdm4mi.inference.bundle import denoise_file

    with pytest.raises(ValueError, match="input_path: give the scan to denoise"):
        denoise_file(checkpoint, None, tmp_path / "out.nii.gz")
    with pytest.raises(ValueError, match="output_path: .* is, holds or lies inside the input"):
        denoise_file(checkpoint, tmp_path, tmp_path / "out.nii.gz")


def test_bundle_overwrite_replaces_its_own_entries_and_keeps_a_users(checkpoint, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    cli(capsys, "export", checkpoint, "--format", "monai-bundle", bundle)
    (bundle / "notes.txt").write_text("mine\n")
    assert main(["export", str(checkpoint), "--format", "monai-bundle", str(bundle)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    before = (bundle / "models" / "model.safetensors").stat().st_mtime_ns
    cli(capsys, "export", checkpoint, "--format", "monai-bundle", bundle, "--overwrite", "--name", "again")
    assert (bundle / "notes.txt").read_text() == "mine\n"
    assert (bundle / "models" / "model.safetensors").stat().st_mtime_ns != before
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["name"] == "again"


def test_metrics_of_an_evaluation_go_into_the_card(checkpoint, tmp_path, capsys):
    stats = {"mean": 37.3, "sd": 2.3, "ci95": [35.0, 38.7], "n_patients": 4, "per_patient": {"Pxyz": 36.0}}
    (tmp_path / "summary.json").write_text(json.dumps({"hu_window": [-1000, 1000], "data_range": 2000, "summary": {
        "unit": "patient", "methods": {"model": {"psnr": stats}}}}))
    cli(capsys, "export", checkpoint, "--format", "safetensors", "--output", tmp_path / "m.safetensors", "--metrics",
        tmp_path / "summary.json")
    held_out = json.loads((tmp_path / "m.card.json").read_text())["metrics"]["held_out"]
    assert held_out["methods"]["model"]["psnr"]["mean"] == 37.3 and "Pxyz" not in json.dumps(held_out)
