"""Running cdm4mi as the tests do: tiny trainings, a phantom hospital, the CLI in-process and as a console script."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cdm4mi.cli.main import main
from cdm4mi.simulate.hospital import HospitalSpec, build_phantom_hospital

REPO = Path(__file__).resolve().parents[1]


SLICES = 4


HOSPITAL = HospitalSpec(num_patients=6, shape=(SLICES, 64, 64))


FIXED_SALT = bytes(range(32))


TINY_UNET = ["network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16",
             "data.patch_size=[32,32]"]
SMALLEST_UNET = ("network.channel_mult=[1]", "network.attention_levels=[false]")  # with TINY_UNET: quick to load


def quick_training(steps: int) -> list[str]:
    """Overrides for a CPU-cheap run of ``steps`` steps: one validation and one checkpoint, at the end."""
    return [f"training.max_steps={steps}", "training.batch_size=4", f"training.warmup_steps={max(1, steps // 6)}",
            f"training.val_every_n_steps={steps}", "training.val_batches=1",
            f"training.checkpoint_every_n_steps={steps}", "training.preview_samples=0",
            "training.log_every_n_steps=5", "training.progress_bar=false"]


def train_tiny(config: str, manifest: Path, output_dir: Path, steps: int, *extra: str) -> Path:
    """``cdm4mi train`` in-process with a tiny U-Net; returns the checkpoint."""
    status = main(["train", "--config", str(REPO / "configs" / config), f"data.manifest={manifest}",
                   f"output_dir={output_dir}", *TINY_UNET, *quick_training(steps), *extra])
    assert status == 0
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    return checkpoint


def tiny_ct_denoiser(root: Path) -> tuple[Path, Path]:
    """Four phantom CT patients of two 32x32 slices under ``root`` and a 2D denoiser (TINY_UNET, SMALLEST_UNET)
    trained one step on them: enough to run denoise and evaluate end to end. Returns the manifest and the
    checkpoint."""
    manifest, _ = make_ct_hospital(root, HospitalSpec(num_patients=4, shape=(2, 32, 32)))
    return manifest, train_tiny("ldct_2d_concat.yaml", manifest, root / "run", 1, *SMALLEST_UNET)


def make_ct_hospital(root: Path, spec: HospitalSpec = HOSPITAL) -> tuple[Path, dict]:
    """Phantom patients as DICOM under ``root/hospital`` and ``cdm4mi manifest`` over them (half train,
    one val, a third test); returns the manifest file and its JSON."""
    build_phantom_hospital(root / "hospital", spec, progress=False)
    manifest = root / "manifest.json"
    (root / "salt.bin").write_bytes(FIXED_SALT)  # the same pseudonyms, hence the same split, every run
    assert main(["manifest", "--root", str(root / "hospital"), "--out", str(manifest), "--split", "0.5,0.17,0.33",
                 "--salt-file", str(root / "salt.bin")]) == 0
    return manifest, json.loads(manifest.read_text())


def cli(capsys, *args: str) -> str:
    """Run ``cdm4mi ARGS`` in-process; asserts exit status 0 and returns stdout."""
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    return out


def console_script() -> list[str]:
    """The installed ``cdm4mi`` command (the console script next to this Python), else ``python -m``."""
    script = Path(sys.executable).with_name("cdm4mi")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cdm4mi.cli.main"]


def mri_volume(seed: int, shape=(32, 32, 4)) -> np.ndarray:
    """A synthetic magnitude 'head' [x, y, z]: background 0, skull, grey and white matter, ventricles,
    with a smooth intensity bias and some texture (scanner units, white matter ~900)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    radius = np.hypot(x / 0.85, y / 0.95)
    slice_ = np.where(radius < 0.95, 300.0, 0.0)
    slice_[radius < 0.85] = 600.0
    slice_[radius < 0.6] = 900.0
    slice_[np.hypot((x - 0.15 * rng.uniform(-1, 1)) / 0.15, y / 0.3) < 1] = 200.0
    volume = np.repeat(slice_[..., None], shape[2], axis=2)
    volume *= 1 + 0.15 * (x + rng.uniform(-1, 1) * y)[..., None]
    volume += (volume > 0) * rng.normal(0, 20, shape)
    return np.clip(volume, 0, None).astype(np.float32)


def cdm4mi(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``cdm4mi ARGS`` from the repository root, in this process through ``main`` (what the console script calls;
    a new process would pay some 7 s of imports on 2 cores). Tests of real processes start their own."""
    stdout, stderr, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(list(args))
    finally:
        os.chdir(cwd)
    result = subprocess.CompletedProcess(["cdm4mi", *args], status, stdout.getvalue(), stderr.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"cdm4mi {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def validation_rows(run_dir: Path) -> list[dict[str, str]]:
    """Validation rows of every run in the folder (a resume logs to the next version_N)."""
    rows = []
    for metrics in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with open(metrics) as handle:
            rows += [row for row in csv.DictReader(handle) if row.get("val/loss")]
    return rows


def train_args(run_dir: Path, *extra: str) -> list[str]:
    """configs/vector_gaussian.yaml made tiny: 8 batches per epoch, a checkpoint every 4 steps."""
    return ["train", "--config", str(REPO / "configs/vector_gaussian.yaml"), f"output_dir={run_dir}",
            "training.progress_bar=false", "data.num_samples=512", "training.batch_size=64", "network.hidden_dim=32",
            "network.num_blocks=1", "training.max_steps=16", "training.warmup_steps=2", "training.val_every_n_steps=8",
            "training.val_batches=1", "training.checkpoint_every_n_steps=4", "training.preview_samples=0", *extra]


def wait_for(condition: Callable[[], object], process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until ``condition()``; if the process ends or ``timeout`` seconds pass first, kill it and fail with the
    end of what it printed (never wait for a run that trains until a signal to end by itself)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"waited in vain ({condition.__doc__ or 'condition'}):\n"
                                 f"{process.communicate()[1][-3000:]}")
        time.sleep(0.005)


def periodic_checkpoint(run_dir: Path) -> Callable[[], bool]:
    """A condition: a periodic ``checkpoints/step<N>.ckpt`` exists. ``ModelCheckpoint`` keeps only the latest
    (``save_top_k=1``), so a given step's file may live for milliseconds: wait for any, never for one name."""
    def exists() -> bool:
        return any((run_dir / "checkpoints").glob("step*.ckpt"))
    exists.__doc__ = f"a periodic checkpoint in {run_dir / 'checkpoints'}"
    return exists
