"""Training at a chosen voxel size (data.spacing_mm) and denoising back onto the scan's own grid."""

import json

import numpy as np

from cdm4mi.data.paired import paired_scans
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import load_scan, resample_like, resample_to
from cdm4mi.io.write import write_nifti
from cdm4mi.training.module import DiffusionModule


def smooth_volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:6, 0:40, 0:40]
    return (200 * np.sin(x / 6.0 + seed) * np.cos(y / 7.0) + 40 * z + rng.normal(0, 1, (6, 40, 40))).astype(np.float32)


def make_cohort(root):
    affine = np.diag([-2.0, -2.0, 4.0, 1.0])  # RAS mm per voxel (x, y, z) of a (w, h, d) NIfTI array
    patients = []
    for index, split in enumerate(["train", "val"]):
        full = smooth_volume(index)
        for name, volume in (("full", full), ("low", full + np.random.default_rng(9).normal(0, 30, full.shape))):
            write_nifti(volume.transpose(2, 1, 0), affine, root / f"case{index}" / f"{name}.nii.gz")
        patients.append({"patient_id": f"P{index:010d}", "modality": "CT", "input": f"case{index}/low.nii.gz",
                         "target": f"case{index}/full.nii.gz", "split": split})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"format": "cdm4mi-manifest/1", "modality": "CT", "patients": patients}))
    return manifest


def test_resample_like_inverts_resample_to(tmp_path):
    manifest = make_cohort(tmp_path)
    scan = load_scan(tmp_path / "case0" / "full.nii.gz", modality="CT")
    fine = resample_to(scan, (4.0, 1.0, 1.0))
    assert fine.array.shape == (6, 79, 79) and np.allclose(fine.spacing_mm, (4.0, 1.0, 1.0))
    back = resample_like(fine.array, fine.affine, scan)
    assert back.shape == scan.array.shape
    assert np.abs(back - scan.array).mean() < 2.0  # HU; bilinear there and back on a smooth image
    assert manifest.is_file()


def test_paired_scans_and_denoise_use_the_training_spacing(tmp_path):
    manifest = make_cohort(tmp_path)
    data = {"name": "paired_scans", "manifest": str(manifest), "mode": "2d", "spacing_mm": [4.0, 4.0, 4.0]}
    val = paired_scans("val", **{k: v for k, v in data.items() if k != "name"})
    assert val[0]["x0"].shape == (1, 20, 20)  # 40 px of 2 mm -> 20 px of 4 mm
    config = {"network": {"name": "unet", "base_channels": 8, "norm_groups": 4, "channel_mult": [1, 2],
                          "num_res_blocks": 1, "attention_levels": [False, False]},
              "data": data, "diffusion": {"parameterization": "x0", "max_train_timestep": 100},
              "sampling": {"steps": 2}}
    module = DiffusionModule(config).eval()
    scan = load_scan(tmp_path / "case1" / "low.nii.gz", modality="CT")
    result = denoise_scan(module, scan, progress=False)
    assert result.mean.shape == scan.array.shape and np.isfinite(result.mean).all()
