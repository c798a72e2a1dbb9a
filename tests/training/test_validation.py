"""Validation in HU while training (``cdm4mi.training.validation``): a denoiser's validation slices are denoised
as ``cdm4mi denoise`` denoises them, PSNR/SSIM against full dose are logged beside the low-dose input's, a preview
goes to TensorBoard, and ``best.ckpt`` is kept by validation PSNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cli_runs import SMALLEST_UNET, make_ct_hospital, train_tiny, validation_rows
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cdm4mi.data.normalize import HUWindow
from cdm4mi.inference.denoise import denoise_volume, neighbour_stack
from cdm4mi.simulate.hospital import HospitalSpec
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.validation import Scale, denoise_batch


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    manifest, _ = make_ct_hospital(root, HospitalSpec(num_patients=4, shape=(2, 32, 32)))
    train_tiny("ldct_2d_concat.yaml", manifest, root / "run", 6, *SMALLEST_UNET, "training.val_every_n_steps=3",
               "training.checkpoint_every_n_steps=3")
    return root / "run"


def test_validation_logs_psnr_and_ssim_of_the_model_and_the_input(run):
    rows = [row for row in validation_rows(run) if row.get("val/psnr")]
    assert len(rows) == 2  # steps 3 and 6
    for row in rows:
        for key in ("val/psnr", "val/ssim", "val/psnr_input", "val/ssim_input"):
            assert math.isfinite(float(row[key])), (key, row)
        assert 10 < float(row["val/psnr_input"]) < 80 and -1 <= float(row["val/ssim"]) <= 1


def test_best_checkpoint_is_the_one_of_the_highest_validation_psnr(run):
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and load_module(best).task == "denoise"
    state = torch.load(best, map_location="cpu", weights_only=True)
    psnrs = [float(row["val/psnr"]) for row in validation_rows(run) if row.get("val/psnr")]
    best_score = next(float(value["best_model_score"]) for key, value in state["callbacks"].items()
                      if "val/psnr" in key)
    assert best_score == pytest.approx(max(psnrs), abs=1e-4)
    assert state["global_step"] == 3 * (1 + psnrs.index(max(psnrs)))


def test_a_preview_image_goes_to_tensorboard(run):
    events = EventAccumulator(str(next((run / "tensorboard").glob("version_*"))), size_guidance={"images": 0})
    events.Reload()
    assert "val/low_dose|model|full_dose" in events.Tags()["images"]


def test_validation_denoises_as_cdm4mi_denoise_does(run):
    module = load_module(run / "checkpoints" / "last.ckpt")
    volume = np.random.default_rng(0).normal(40.0, 30.0, (3, 32, 32)).astype(np.float32)
    normalization = module.preprocessing.normalizer()
    units = torch.as_tensor(np.asarray(normalization.forward(volume)))
    cond = neighbour_stack(units, module.preprocessing.context)
    expected = denoise_volume(module, volume, seed=5, batch_size=3, progress=False).mean
    got = normalization.inverse(denoise_batch(module, cond, seed=5)[:, 0]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_scores_are_in_hu_within_the_evaluation_window():
    class Module:
        class preprocessing:
            @staticmethod
            def normalizer():
                return HUWindow()

    target = torch.zeros(2, 1, 16, 16)
    estimate = target + 20.0 / 500.0  # 20 HU off everywhere (HU/500 model units)
    psnr, ssim = Scale(Module(), target).scores(estimate, target)
    assert float(psnr) == pytest.approx(20 * math.log10(2000 / 20), abs=1e-3)  # data range 2000 HU
    assert float(ssim) < 1
