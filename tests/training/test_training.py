"""The one trainer and sampler, driven through the real ``cdm4mi`` CLI, on points and vectors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import cdm4mi, validation_rows

from cdm4mi.cli.main import main
from cdm4mi.data.toy import correlated_gaussian, gaussian_mixture
from cdm4mi.evaluation.distributions import mixture_report, moment_report
from cdm4mi.training.ema import warmup_ema_avg_fn

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cdm4mi.cli.main"]


@pytest.mark.slow
def test_toy2d_learns_the_gaussian_mixture(tmp_path):
    run_dir = tmp_path / "toy2d"
    cdm4mi("train", "--config", "configs/toy2d.yaml", f"output_dir={run_dir}", "training.progress_bar=false")
    samples_path = tmp_path / "samples.npy"
    printed = cdm4mi("sample", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"),
                     "--out", str(samples_path), "--num-samples", "6000").stdout
    assert "samples:" in printed and samples_path.with_suffix(".png").stat().st_size > 10_000
    truth = gaussian_mixture("test").truth
    report = mixture_report(torch.from_numpy(np.load(samples_path)), truth["means"], truth["weights"], 0.3)
    # 6000 samples: the standard error of a proportion is <= 0.0065, so 0.03 is ~5 SE.
    np.testing.assert_allclose(report["proportions"], report["true_proportions"], atol=0.03)
    np.testing.assert_allclose(report["mode_means"], report["true_means"], atol=0.1)
    assert report["outlier_fraction"] < 0.02
    assert sorted(p.name for p in (run_dir / "previews").glob("*.png")) == [
        "step0000500.png", "step0001000.png", "step0001500.png"]
    rows = validation_rows(run_dir)
    assert float(rows[-1]["val/sample_mean_error"]) < 0.1


@pytest.mark.slow
def test_vector_config_learns_a_correlated_gaussian(tmp_path):
    run_dir = tmp_path / "vector"
    # 500 of the config's 1500 steps: the same errors here (mean 0.017, covariance 0.066), a third of the time
    cdm4mi("train", "--config", "configs/vector_gaussian.yaml", f"output_dir={run_dir}", "training.progress_bar=false",
           "training.max_steps=500")
    samples_path = tmp_path / "samples.pt"
    cdm4mi("sample", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(samples_path),
           "--num-samples", "10000", "--batch-size", "5000")
    samples = torch.load(samples_path)
    truth = correlated_gaussian("test", dim=8).truth
    report = moment_report(samples, truth["mean"], truth["cov"])
    # The sample mean of 10000 draws has SE <= sqrt(1.2/10000) = 0.011 per coordinate.
    assert report["mean_max_abs_error"] < 0.06
    assert report["cov_relative_frobenius_error"] < 0.12
    # The correlations are learned, not just the variances: a diagonal Gaussian is far worse.
    diagonal = moment_report(truth["mean"] + torch.randn(10000, 8, dtype=torch.float64) * truth["cov"].diag().sqrt(),
                             truth["mean"], truth["cov"])
    assert report["cov_relative_frobenius_error"] < diagonal["cov_relative_frobenius_error"] / 4


@pytest.mark.slow
def kill_after_checkpoint(args: list[str], checkpoint: Path, min_step: int) -> int:
    """Starts ``cdm4mi train``, SIGKILLs it once ``checkpoint`` holds step >= ``min_step``; the step it held."""
    process = subprocess.Popen([*CLI, "train", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while process.poll() is None:
            if checkpoint.is_file():
                step = torch.load(checkpoint, weights_only=True)["global_step"]
                if step >= min_step:
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=60)
                    return step
            time.sleep(0.02)
        raise AssertionError(f"training ended before it could be killed:\n{process.stderr.read().decode()[-2000:]}")
    finally:
        process.kill()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_unbroken_run_bit_for_bit(tmp_path):
    """8 batches per epoch and a checkpoint every 8 steps: the resumed run restores optimizer, LR scheduler,
    EMA and random state and ends with exactly the weights of a run that was never interrupted."""
    def args(run_dir: Path) -> list[str]:
        return ["--config", "configs/vector_gaussian.yaml", f"output_dir={run_dir}", "training.progress_bar=false",
                "data.num_samples=2048", "training.batch_size=256", "network.hidden_dim=64", "training.max_steps=200",
                "training.val_every_n_steps=8", "training.val_batches=1", "training.checkpoint_every_n_steps=8",
                "training.preview_samples=0", "training.warmup_steps=20"]

    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    cdm4mi("train", *args(unbroken))
    last = broken / "checkpoints" / "last.ckpt"
    killed_at = kill_after_checkpoint(args(broken), last, min_step=16)
    assert 16 <= killed_at < 200 and torch.load(last, weights_only=True)["global_step"] < 200
    refused = cdm4mi("train", *args(broken), check=False)
    assert refused.returncode == 2 and "already holds a run; pass --resume" in refused.stderr
    resumed_from = torch.load(last, weights_only=True)["global_step"]
    cdm4mi("train", *args(broken), "--resume")
    expected, resumed = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (unbroken, broken))
    assert resumed["global_step"] == expected["global_step"] == 200
    for key in ("state_dict", "current_model_state"):  # EMA weights and live weights
        for name, value in expected[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    assert expected["lr_schedulers"] == resumed["lr_schedulers"]
    assert torch.equal(expected["callbacks"]["RandomState"]["torch"], resumed["callbacks"]["RandomState"]["torch"])
    assert resumed["cdm4mi"]["version"] and resumed["cdm4mi"]["task"] == "generate"
    # Validation every 8 steps: none repeated across the kill, and all of them after the resumed step.
    every = list(range(7, 200, 8))
    assert [int(row["step"]) for row in validation_rows(unbroken)] == every
    steps = [int(row["step"]) for row in validation_rows(broken)]
    assert len(steps) == len(set(steps)) and set(steps) <= set(every)
    assert [step for step in steps if step >= resumed_from] == [step for step in every if step >= resumed_from]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [12, 12]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_ddp_training_leaves_no_process_group(tmp_path, ddp_in_this_process):
    """As after prediction (tests/inference/test_predict.py): the gloo group is destroyed once fit has returned on
    every rank, not left to the interpreter's shutdown. One DDP process, in this process."""
    import torch.distributed as dist

    from cdm4mi.config import builtin_config, load_config
    from cdm4mi.training.run import fit

    config = load_config(builtin_config("vector_gaussian.yaml"), [
        f"output_dir={tmp_path / 'run'}", "training.accelerator=cpu", "training.devices=1", "training.strategy=ddp",
        "training.max_steps=2", "training.batch_size=16", "training.preview_samples=8", "training.progress_bar=false"])
    _, trainer = fit(config)
    assert trainer.global_step == 2 and trainer.world_size == 1
    assert not dist.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("action", ["stop", "skip"])
def test_ddp_ranks_stop_or_skip_a_nan_loss_of_one_rank_together(action, tmp_path):
    """Rank 1 alone meets a NaN loss: both ranks stop together (neither hangs waiting for the other), keeping
    the last good checkpoint. Lightning cannot skip a step under DDP: 'skip' is refused before training."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), action], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    if action == "stop":
        assert result.returncode != 0 and "training.nonfinite_loss=stop" in result.stderr, result.stderr[-3000:]
        assert "of another process is NaN or Inf at step" in result.stderr and "the training loss is nan" in result.stderr
        step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        assert step == 6  # the good checkpoint before the NaN is kept
        return
    assert result.returncode != 0 and "ValueError: training.nonfinite_loss: 'skip' works on one process only" \
        in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_bad_config_gets_one_line_naming_the_key(tmp_path, capsys):
    cases = {
        "training.max_stepz=5": "config key 'training.max_stepz': unknown key",
        "training.max_steps=abc": "config key 'training.max_steps': Input should be a valid integer",
        "diffusion.beta_schedule=quadratic": "config key 'diffusion.beta_schedule': Input should be",
        "network.hidden_dimm=3": "network.hidden_dimm: unknown option for 'simple_score'",
        "network.hidden_dim=wide": "network.hidden_dim: Input should be a valid integer",
        "data.name=imagenet": "data.name: unknown 'imagenet'",
        "data.std=-1": "data.weights and data.std must be positive",
        "no_equals_sign": "expected key=value",
    }
    for override, expected in cases.items():
        status = main(["train", "--config", str(REPO / "configs/toy2d.yaml"), f"output_dir={tmp_path / 'x'}", override])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2, override
        assert len(lines) == 1 and lines[0].startswith("cdm4mi train: error:") and expected in lines[0], lines
        assert not (tmp_path / "x").exists(), "no partial output"
    assert main(["train", "--config", "configs/nope.yaml"]) == 2
    assert "--config: file not found" in capsys.readouterr().err
    # (As real processes, with and without --debug: the bad-input corpus, tests/cli/test_bad_inputs.py.)


def test_sample_refuses_to_overwrite_and_bad_checkpoints(tmp_path, capsys):
    existing = tmp_path / "out.npy"
    existing.write_bytes(b"keep me")
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["sample", "--checkpoint", str(bogus), "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert main(["sample", "--checkpoint", str(bogus), "--out", str(tmp_path / "new.npy")]) == 2
    assert "is not a loadable cdm4mi checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "new.npy").exists()


def test_ema_warmup_follows_then_averages():
    average = warmup_ema_avg_fn(0.999)
    averaged, current = torch.zeros(3), torch.ones(3)
    # Update 1 (n=1): decay (1+1)/(10+1) = 0.18 -> moves 82 % of the way.
    assert average(averaged, current, torch.tensor(1))[0].item() == pytest.approx(1 - 2 / 11)
    # Late updates use the configured decay.
    assert average(averaged, current, torch.tensor(100_000))[0].item() == pytest.approx(0.001)


def test_help_lists_the_subcommands(capsys):
    for argv in (["--help"], ["train", "--help"], ["--version"]):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("simulate", "manifest", "train", "sample", "denoise", "evaluate", "demo"))
    assert "--resume" in out and "--overwrite" in out
