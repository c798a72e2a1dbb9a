"""The training recipe's mechanics on a real CT slice (pydicom's CT_small.dcm): crops per slice fill the batch,
flips/rotations keep pairs aligned, on-the-fly dose noise has `cdm4mi simulate`'s level at the same dose,
full-dose-only manifests train, and whole validation slices of any size pass through the U-Net."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file
from torch.utils.data import DataLoader

from cdm4mi.cli.main import main
from cdm4mi.data.dose_augmentation import DoseAugmentation, build_noise_bank, noise_scale
from cdm4mi.data.registry import build_dataset
from cdm4mi.inference.denoise import denoise_volume
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti
from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.noise_estimate import soft_tissue_noise_hu
from cdm4mi.simulate.relative_dose import simulate_relative_dose
from cdm4mi.training.checkpoint import load_module

CT_SMALL = get_testdata_file("CT_small.dcm")
UNITS_PER_HU = 1 / 500  # the default HU window's scale


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory):
    """CT_small as a full-dose NIfTI, and an 'input' 100 HU above it (to check pairs stay aligned)."""
    root = tmp_path_factory.mktemp("real_ct")
    scan = load_scan(CT_SMALL, modality="CT")
    write_nifti(scan.array, scan.affine, root / "full.nii.gz")
    write_nifti(scan.array + 100.0, scan.affine, root / "plus100.nii.gz")
    return root, scan


def manifest(root, patients):
    path = root / f"manifest{len(list(root.glob('manifest*.json')))}.json"
    path.write_text(json.dumps({"format": "cdm4mi-manifest/1", "modality": "CT", "patients": patients}))
    return str(path)


def test_crops_per_slice_fill_the_batch_and_differ(real_ct):
    root, _ = real_ct
    path = manifest(root, [{"patient_id": "P1", "input": "plus100.nii.gz", "target": "full.nii.gz", "split": "train"}])
    one_crop = build_dataset("paired_scans", "train", manifest=path, patch_size=[32, 32])
    many = build_dataset("paired_scans", "train", manifest=path, patch_size=[32, 32], patches_per_slice=16)
    assert len(one_crop) == 1 and len(many) == 16
    batch = next(iter(DataLoader(many, batch_size=16, shuffle=True, drop_last=True)))
    assert batch["x0"].shape == (16, 1, 32, 32)
    distinct = {tuple(crop.flatten()[:64].tolist()) for crop in batch["x0"]}
    assert len(distinct) >= 14  # random crops of one 128x128 slice: nearly all different


def test_flips_and_rotations_keep_pairs_aligned(real_ct):
    root, _ = real_ct
    path = manifest(root, [{"patient_id": "P1", "input": "plus100.nii.gz", "target": "full.nii.gz", "split": "train"}])
    data = build_dataset("paired_scans", "train", manifest=path, patch_size=[32, 32], patches_per_slice=64,
                         augment=True, seed=3)
    plain = build_dataset("paired_scans", "train", manifest=path, patch_size=[32, 32], patches_per_slice=64, seed=3)
    items = [data[i] for i in range(64)]
    for item in items:  # input = target + 100 HU wherever the window does not clip
        difference = (item["cond"] - item["x0"])[item["x0"] > -1.9]
        np.testing.assert_allclose(difference, 100 * UNITS_PER_HU, atol=1e-5)
    # Some items are transformed: the same crops would otherwise agree with the unaugmented data set.
    transformed = sum(not torch.equal(item["x0"], plain[i]["x0"]) for i, item in enumerate(items))
    assert transformed > 32


def test_bank_noise_matches_simulate_at_the_same_dose(real_ct):
    _, scan = real_ct
    bank = build_noise_bank(scan.array, scan.spacing_mm[1:], realizations=4, seed=0)
    for dose in (0.1, 0.25, 0.5):
        # what `cdm4mi simulate --dose` inserts (electronic noise included), with the own noise the bank saw
        simulated = np.mean([simulate_relative_dose(scan.array, scan.spacing_mm[1:], dose, seed=s,
                                                    own_noise_hu=bank.own_noise_hu)[1]["added_noise_hu"]
                             for s in range(4)])
        on_the_fly = np.mean([soft_tissue_noise_hu(noise_scale(dose) * n, scan.array) for n in bank.noise])
        assert on_the_fly == pytest.approx(simulated, rel=0.08), dose
        assert bank.added_noise_hu(dose) == pytest.approx(on_the_fly, rel=1e-6)
    if bank.calibrated:  # relative dose: 50 % adds the scan's own noise again
        assert bank.added_noise_hu(0.5) == pytest.approx(bank.own_noise_hu, rel=0.15)


def test_dose_augmented_items_carry_their_noise_level(real_ct):
    root, scan = real_ct
    path = manifest(root, [{"patient_id": "P1", "target": "full.nii.gz", "split": "train"}])
    data = build_dataset("paired_scans", "train", manifest=path, patch_size=[64, 64], patches_per_slice=40,
                         dose_augmentation={"dose_range": [0.1, 0.5], "realizations": 2}, metadata=["noise_level"])
    own = data._volume(0)["noise_bank"].own_noise_hu
    said, measured = [], []
    for i in range(40):
        item = data[i]
        image, vector = item["cond"]["image"], item["cond"]["vector"]
        assert vector[1] == 1.0  # the noise level is known for a simulated item
        # the same level, unencoded, for the objective's warm starts (diffusion.warm_start_share)
        assert float(item["input_noise_std"]) == pytest.approx(0.05 * 2 ** float(vector[0]), rel=1e-5)
        level_hu = 0.05 * 2 ** float(vector[0]) / UNITS_PER_HU  # cdm4mi.data.metadata's encoding, in HU
        said.append(math.sqrt(max(level_hu**2 - own**2, 0.0)))  # the added part: input minus target
        inside = item["x0"] > -0.3  # soft tissue and denser: no clipping at the window's air end
        measured.append(float((image - item["x0"])[inside].std()) / UNITS_PER_HU)
    said, measured = np.array(said), np.array(measured)
    # The vector follows each item's drawn dose: noisier items say so, at about the right level.
    assert np.corrcoef(said, measured)[0, 1] > 0.8
    assert 0.6 < np.median(measured / said) < 1.4


def test_dose_augmentation_options_are_checked(real_ct):
    root, _ = real_ct
    path = manifest(root, [{"patient_id": "P1", "target": "full.nii.gz", "split": "train"}])
    for options, problem in (({"dose_range": [0.5, 0.1]}, "low <= high"), ({"dose_range": [0, 0.5]}, "0 < low"),
                             ({"realizations": 0}, "realizations"), ({"dose": 0.2}, "unknown key 'dose'")):
        with pytest.raises(ValueError, match=f"data.dose_augmentation.*{problem}"):
            build_dataset("paired_scans", "train", manifest=path, dose_augmentation=options)
    with pytest.raises(ValueError, match="no low-dose input"):
        build_dataset("paired_scans", "train", manifest=path)
    assert DoseAugmentation().validation_dose == pytest.approx(math.sqrt(0.05))


@pytest.mark.slow
def test_full_dose_only_manifest_trains_and_denoises(real_ct, tmp_path, capsys):
    """cdm4mi train on a manifest without low-dose scans (whole 128x128 validation slices, not a multiple of
    2^3 after a crop would be), then cdm4mi denoise on a simulated low-dose slice."""
    root, scan = real_ct
    path = manifest(root, [{"patient_id": "P1", "target": "full.nii.gz", "split": "train"},
                           {"patient_id": "P2", "target": "plus100.nii.gz", "split": "val"}])
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/ldct_2d.yaml", f"data.manifest={path}", f"output_dir={run}",
                 "training.max_steps=6", "training.val_every_n_steps=3", "training.val_batches=1",
                 "training.batch_size=4", "data.patch_size=[48, 48]", "training.progress_bar=false",
                 "training.preview_samples=2", "training.checkpoint_every_n_steps=6"]) == 0
    # the recipe calibrates its uncertainty on the cohort's validation patient after training
    printed = capsys.readouterr().out
    assert "uncertainty: mean ± 2 std covers 95% of body voxels of the full-dose truth on 1 val scan(s)" in printed
    calibration = load_module(run / "checkpoints" / "last.ckpt").card["uncertainty"]
    assert calibration["split"] == "val" and calibration["scale"] > 0 and calibration["doses"][0] == 0.1
    low = simulate_low_dose_ct(scan.array, scan.spacing_mm[1:], 0.25, seed=1)
    write_nifti(low, scan.affine, tmp_path / "low.nii.gz")
    # unadapted, as denoise_volume below (the recipe's adaptation to the scan: tests/inference/test_adaptation.py)
    assert main(["denoise", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--input",
                 str(tmp_path / "low.nii.gz"), "--output", str(tmp_path / "out.nii.gz"), "--samples", "2",
                 "--adapt-steps", "0"]) == 0
    assert "uncertainty (calibrated std over 2 samples)" in capsys.readouterr().out
    denoised = load_scan(tmp_path / "out.nii.gz").array
    assert denoised.shape == scan.array.shape and np.isfinite(denoised).all()
    module = load_module(run / "checkpoints" / "last.ckpt")
    raw = denoise_volume(module, low, samples=2, progress=False, calibrated=False)
    calibrated = denoise_volume(module, low, samples=2, progress=False)
    expected = calibration["scale"] * (raw.std + calibration["offset"] * raw.input_noise_scan)
    np.testing.assert_allclose(calibrated.std, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(load_scan(tmp_path / "out_std.nii.gz").array, calibrated.std, rtol=1e-4, atol=1e-3)


def test_validation_batches_of_any_slice_size_are_padded_for_the_unet():
    from cdm4mi.training.module import pad_images

    x0 = torch.arange(2 * 1 * 202 * 203, dtype=torch.float32).reshape(2, 1, 202, 203)
    batch = {"x0": x0, "cond": {"image": x0 + 1, "vector": torch.ones(2, 4)}}
    padded = pad_images(batch, 8)
    assert padded["x0"].shape == (2, 1, 208, 208) and padded["cond"]["image"].shape == (2, 1, 208, 208)
    assert torch.equal(padded["x0"][..., :202, :203], x0) and torch.equal(padded["x0"][..., 207, 207], x0[..., 201, 202])
    assert torch.equal(padded["cond"]["vector"], batch["cond"]["vector"])
    assert pad_images({"x0": x0[..., :200, :200]}, 8)["x0"].shape == (2, 1, 200, 200)
