"""3D end to end through the CLI: a tiny 3D U-Net (configs/mri_3d_concat.yaml) trains on random patches of
NIfTI volumes, then ``cdm4mi denoise`` runs it over a larger volume through MONAI's SlidingWindowInferer
and writes it back on the input's grid and affine."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from cli_runs import FIXED_SALT, REPO, cli, mri_volume, quick_training

from cdm4mi.cli.main import main
from cdm4mi.inference.denoise import denoise_volume
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti
from cdm4mi.simulate.mri_noise import add_rician_noise
from cdm4mi.training.checkpoint import load_module

TINY_3D = ["network.base_channels=8", "network.norm_groups=4", "network.num_head_channels=8",
           "network.channel_mult=[1,2]", "network.attention_levels=[false,true]", "network.attention_window=4",
           "data.patch_size=[8,16,16]", "data.patches_per_volume=2"]


def test_3d_config_trains_on_patches_and_denoises_a_nifti_through_the_sliding_window(tmp_path, capsys):
    cohort = tmp_path / "mri"
    # An oblique affine, voxels not in the canonical order: the output must land on exactly the input's grid.
    rotation = np.array([[0.0, 0.9, 0.1], [0.9, 0.0, 0.0], [0.0, -0.1, 2.0]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation, [-14.0, 20.0, 31.0]
    for index in range(4):
        clean = mri_volume(index, shape=(40, 36, 12))
        write_nifti(clean, affine, cohort / f"case{index}" / "full.nii.gz")
        write_nifti(add_rician_noise(clean, 40.0, seed=index), affine, cohort / f"case{index}" / "low.nii.gz")
    manifest = tmp_path / "mri.json"
    (tmp_path / "salt.bin").write_bytes(FIXED_SALT)
    cli(capsys, "manifest", "--root", cohort, "--out", manifest, "--modality", "MR", "--split", "0.5,0.25,0.25",
        "--salt-file", tmp_path / "salt.bin")
    status = main(["train", "--config", str(REPO / "configs" / "mri_3d_concat.yaml"), f"data.manifest={manifest}",
                   f"output_dir={tmp_path / 'run'}", *TINY_3D, *quick_training(6)])
    assert status == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module = load_module(checkpoint)
    assert module.config.data["mode"] == "3d" and module.backbone.spatial_dims == 3

    entry = next(e for e in json.loads(manifest.read_text())["patients"] if e["split"] == "test")
    low = cohort / entry["input"]
    output = tmp_path / "denoised.nii.gz"
    out = cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", low, "--output", output, "--batch-size", "2")
    assert "denoised 12 slices of 40x36" in out
    written, given = nib.load(output), nib.load(low)
    assert written.shape == given.shape  # the input's own voxel order and affine: the same grid, voxel for voxel
    np.testing.assert_allclose(written.affine, given.affine, atol=1e-5)
    assert np.isfinite(np.asarray(written.dataobj)).all()

    # The volume (12 x 40 x 36 canonical) is larger than the 8 x 16 x 16 window: several windows are blended,
    # and a voxel's output depends only on the windows around it.
    volume = load_scan(low).array
    assert any(v > p for v, p in zip(volume.shape, (8, 16, 16)))
    options = {"t_start": 20, "input_noise_std": 0.05, "progress": False}
    before = denoise_volume(module, volume, **options).mean
    changed = volume.copy()
    # Shuffle the voxels of one corner: the histogram, hence the fitted percentile normalization, is unchanged.
    corner = changed[:, :4, :4]
    changed[:, :4, :4] = np.random.default_rng(0).permutation(corner.ravel()).reshape(corner.shape)
    after = denoise_volume(module, changed, **options).mean
    assert not np.array_equal(before[:, :4, :4], after[:, :4, :4])
    np.testing.assert_array_equal(before[:, -8:, -8:], after[:, -8:, -8:])  # beyond every window holding the corner
