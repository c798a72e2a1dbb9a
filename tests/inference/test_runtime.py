"""Where a trained model runs (``cdm4mi.inference.runtime``): ``--device`` on every command that runs one, tensors
that stay on the device asked for, autocast precision, channels_last and torch.compile that change the speed but
not the result. The ``cuda`` cases run on a machine with a GPU and are skipped elsewhere; their ``cpu`` twins run
the same code here."""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from model_files import CT_STATE, random_checkpoint
from scan_files import CT_SMALL
from torch.overrides import TorchFunctionMode

from cdm4mi.cli.main import build_parser, main
from cdm4mi.inference import runtime
from cdm4mi.inference.denoise import denoise_volume
from cdm4mi.training.checkpoint import load_module

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SMALL_UNET = ["network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16"]


@pytest.fixture(scope="module")
def ct_checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("runtime") / "ct.ckpt", "ldct_2d_concat.yaml", CT_STATE,
                             *SMALL_UNET)


@pytest.fixture(scope="module")
def vector_checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("runtime") / "vector.ckpt", "vector_gaussian.yaml", None,
                             "data.num_samples=256", "sampling.steps=4")


class DeviceRecorder(TorchFunctionMode):
    """Records the device of every tensor that a torch function returns while it is active."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                self.devices.add(value.device.type)
        return result


@pytest.fixture
def placed(monkeypatch) -> list[torch.nn.Module]:
    """The modules the CLI placed on a device (``runtime.place`` spied on)."""
    modules = []
    original = runtime.place

    def spy(module, *args, **kwargs):
        modules.append(original(module, *args, **kwargs))
        return modules[-1]

    monkeypatch.setattr(runtime, "place", spy)
    return modules


def parameter_devices(module: torch.nn.Module) -> set[str]:
    return {parameter.device.type for parameter in module.parameters()}


def test_auto_is_the_default_device_and_resolves_to_what_the_machine_has():
    parser = build_parser()
    args = parser.parse_args(["denoise", "--checkpoint", "c", "--input", "i", "--output", "o.nii.gz"])
    assert args.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert (args.precision, args.channels_last, args.compile) == ("fp32", None, False)
    for command in (["sample", "--checkpoint", "c", "--out", "o.npy"], ["evaluate", "--checkpoint", "c", "--out", "o"]):
        assert parser.parse_args(command).device == args.device
    assert parser.parse_args(["train", "--config", "c"]).device is None  # the config's training.accelerator


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("text", ["cuda", "cuda:1"])
def test_a_device_the_machine_lacks_is_refused_never_replaced(text):
    with pytest.raises(ValueError, match=f"--device: {text}: no CUDA device on this machine"):
        runtime.resolve_device(text)


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_spellings_are_refused(text):
    with pytest.raises(ValueError, match="--device: expected cpu, cuda, cuda:N, mps or auto"):
        runtime.resolve_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("command", ["denoise", "sample", "evaluate", "train"])
def test_cli_refuses_cuda_without_a_gpu_in_one_line_and_writes_nothing(command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {"denoise": ["--checkpoint", "c.ckpt", "--input", str(CT_SMALL), "--output", str(out / "d.nii.gz")],
            "sample": ["--checkpoint", "c.ckpt", "--out", str(out / "s.npy")],
            "evaluate": ["--checkpoint", "c.ckpt", "--out", str(out)],
            "train": ["--config", "c.yaml", f"output_dir={out}"]}[command]
    status = main([command, *argv, "--device", "cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and "--device" in lines[0] and "no CUDA device on this machine" in lines[0]
    assert not out.exists()


def test_a_cpu_denoise_run_keeps_every_tensor_on_the_cpu(ct_checkpoint, tmp_path, capsys, placed):
    output = tmp_path / "denoised.nii.gz"
    with DeviceRecorder() as recorder:
        assert main(["denoise", "--checkpoint", str(ct_checkpoint), "--input", str(CT_SMALL), "--output", str(output),
                     "--device", "cpu", "--steps", "2"]) == 0
    assert recorder.devices - {"meta"} == {"cpu"}  # meta: the size budget builds the network without storage
    assert parameter_devices(placed[0]) == {"cpu"}
    assert sorted(nib.load(output).shape) == [1, 128, 128]


@pytest.mark.parametrize("device", DEVICES)
def test_denoise_runs_the_model_on_the_device_asked_for(device, ct_checkpoint, tmp_path, capsys, placed):
    output = tmp_path / "denoised.nii.gz"
    assert main(["denoise", "--checkpoint", str(ct_checkpoint), "--input", str(CT_SMALL), "--output", str(output),
                 "--device", device, "--steps", "2", "--samples", "2"]) == 0
    assert parameter_devices(placed[0]) == {device}
    assert np.isfinite(np.asarray(nib.load(output).dataobj)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_sample_draws_on_the_device_asked_for(device, vector_checkpoint, tmp_path, capsys, placed):
    output = tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(vector_checkpoint), "--out", str(output), "--num-samples", "16",
                 "--device", device]) == 0
    assert parameter_devices(placed[0]) == {device}
    samples = np.load(output)
    assert samples.shape == (16, 8) and np.isfinite(samples).all()


@pytest.mark.parametrize("device", DEVICES)
def test_generative_evaluate_runs_on_the_device_asked_for(device, vector_checkpoint, tmp_path, capsys, placed):
    assert main(["evaluate", "--checkpoint", str(vector_checkpoint), "--out", str(tmp_path / "eval"),
                 "--num-samples", "64", "--device", device]) == 0
    assert parameter_devices(placed[0]) == {device}
    assert (tmp_path / "eval" / "summary.json").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_is_reproducible_on_a_device_and_seeds_differ(device, ct_checkpoint):
    module = runtime.load_for_inference(ct_checkpoint, device)
    volume = np.random.default_rng(0).normal(40.0, 30.0, (2, 64, 64)).astype(np.float32)
    runs = [denoise_volume(module, volume, steps=2, t_start=50, seed=seed, progress=False).mean for seed in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_the_network_in_it_and_stays_close_to_fp32(precision, ct_checkpoint):
    module = runtime.load_for_inference(ct_checkpoint, "cpu", precision)
    volume = np.random.default_rng(1).normal(40.0, 30.0, (2, 64, 64)).astype(np.float32)
    dtypes = []
    hook = module.backbone.register_forward_hook(lambda _module, _inputs, output: dtypes.append(output.dtype))
    reduced = denoise_volume(module, volume, steps=2, t_start=50, progress=False, precision=precision)
    hook.remove()
    full = denoise_volume(module, volume, steps=2, t_start=50, progress=False)
    assert set(dtypes) == {runtime.PRECISIONS[precision]}
    assert reduced.mean.dtype == np.float32
    error = np.abs(reduced.mean - full.mean)  # HU; the outputs span hundreds of HU
    assert 0 < error.mean() < 5.0


def test_channels_last_changes_the_memory_format_not_the_result(ct_checkpoint):
    volume = np.random.default_rng(2).normal(40.0, 30.0, (2, 64, 64)).astype(np.float32)
    plain = runtime.load_for_inference(ct_checkpoint, "cpu", channels_last=False)
    nhwc = runtime.load_for_inference(ct_checkpoint, "cpu", channels_last=True)
    convolutions = [m.weight for m in nhwc.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    expected = denoise_volume(plain, volume, steps=2, t_start=50, progress=False).mean
    np.testing.assert_allclose(denoise_volume(nhwc, volume, steps=2, t_start=50, progress=False).mean, expected,
                               atol=1e-3)


def test_channels_last_leaves_a_3d_network_as_it_is(tmp_path):
    path = random_checkpoint(tmp_path / "3d.ckpt", "ldct_3d_concat.yaml", CT_STATE, "network.base_channels=8",
                             "network.norm_groups=4", "network.num_head_channels=8")
    module = runtime.place(load_module(path), "cpu", channels_last=True)
    assert all(p.is_contiguous() for p in module.parameters())


def test_a_precision_the_device_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "an old GPU")
    with pytest.raises(ValueError, match="--precision: bf16: an old GPU has no bfloat16"):
        runtime.check_precision("bf16", torch.device("cuda"))
    runtime.check_precision("bf16", torch.device("cpu"))


@pytest.mark.slow
def test_a_compiled_network_gives_the_result_of_the_eager_one(ct_checkpoint, monkeypatch):
    # Dynamo traces the backbone and AOTAutograd lowers it, as with the default backend; Inductor's C++ code
    # generation (a minute on 2 cores, torch's own concern) is left out.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    volume = np.random.default_rng(3).normal(40.0, 30.0, (1, 64, 64)).astype(np.float32)
    eager = denoise_volume(runtime.load_for_inference(ct_checkpoint, "cpu"), volume, steps=2, t_start=50,
                           progress=False).mean
    compiled = runtime.load_for_inference(ct_checkpoint, "cpu", compile=True)
    assert type(compiled.backbone).__name__ == "OptimizedModule"
    np.testing.assert_allclose(denoise_volume(compiled, volume, steps=2, t_start=50, progress=False).mean, eager,
                               atol=1e-2)


def test_training_device_maps_to_lightning_accelerators():
    from cdm4mi.training.run import device_overrides, resolve_precision

    assert device_overrides("cpu") == ["training.accelerator=cpu"]
    assert device_overrides("cuda") == ["training.accelerator=gpu"]
    assert device_overrides("cuda:1") == ["training.accelerator=gpu", "training.devices=[1]"]
    assert resolve_precision("auto", "cpu") == "32-true"
