"""``cdm4mi train --resume auto``: a job that may be requeued starts a run or continues it from its latest
checkpoint, ``last.ckpt`` or the ``hpc_ckpt_<n>.ckpt`` Lightning saves on SLURM's requeue signal (SIGUSR1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import REPO, periodic_checkpoint, train_args, wait_for

import cdm4mi.training.run
from cdm4mi.cli.main import main
from cdm4mi.training.run import resume_checkpoint


@pytest.fixture
def resumed_from(monkeypatch) -> list:
    """The ``ckpt_path`` each ``trainer.fit`` got (None: a fresh start)."""
    paths = []
    fit_until_stopped = cdm4mi.training.run.fit_until_stopped

    def recording(trainer, module, datamodule, ckpt_path, stopper):
        paths.append(ckpt_path)
        return fit_until_stopped(trainer, module, datamodule, ckpt_path, stopper)

    monkeypatch.setattr(cdm4mi.training.run, "fit_until_stopped", recording)
    return paths


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_resume_auto_starts_a_run_then_continues_it_from_the_latest_checkpoint(tmp_path, resumed_from, capsys):
    run, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert main([*train_args(run), "--resume", "auto"]) == 0  # nothing there: a fresh start
    assert resumed_from == [None] and step_of(checkpoints / "last.ckpt") == 16
    # an override right after --resume stays an override
    assert main([*train_args(run)[:3], "--resume", *train_args(run, "training.max_steps=24")[3:]]) == 0
    assert resumed_from[1] == str(checkpoints / "last.ckpt") and step_of(checkpoints / "last.ckpt") == 24
    # SLURM's requeue signal saved hpc_ckpt_2 (step 24) after last.ckpt's step (made 20 here): it is the latest
    shutil.copy(checkpoints / "last.ckpt", checkpoints / "hpc_ckpt_2.ckpt")
    torch.save({**torch.load(checkpoints / "last.ckpt", weights_only=True), "global_step": 20}, checkpoints / "last.ckpt")
    assert main([*train_args(run, "training.max_steps=28"), "--resume", "auto"]) == 0
    assert resumed_from[2] == str(checkpoints / "hpc_ckpt_2.ckpt") and step_of(checkpoints / "last.ckpt") == 28
    capsys.readouterr()


def test_the_latest_step_wins_and_last_ckpt_wins_a_tie(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    assert resume_checkpoint(tmp_path) is None
    for name, step in [("last.ckpt", 8), ("hpc_ckpt_1.ckpt", 4), ("hpc_ckpt_2.ckpt", 12), ("hpc_ckpt_10.ckpt", 12),
                       ("step0000016.ckpt", 16)]:  # ModelCheckpoint's periodic files are not resumed from
        torch.save({"global_step": step}, checkpoints / name)
    assert resume_checkpoint(tmp_path) == checkpoints / "hpc_ckpt_10.ckpt"
    torch.save({"global_step": 12}, checkpoints / "last.ckpt")
    assert resume_checkpoint(tmp_path) == checkpoints / "last.ckpt"
    (checkpoints / "hpc_ckpt_3.ckpt").write_bytes(b"cut short")
    with pytest.raises(ValueError, match=r"--resume: .*hpc_ckpt_3.ckpt is not a loadable checkpoint"):
        resume_checkpoint(tmp_path)


def test_a_fresh_start_refuses_a_run_holding_only_an_hpc_checkpoint_and_resume_needs_a_word(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3}, tmp_path / "run" / "checkpoints" / "hpc_ckpt_1.ckpt")
    assert main(train_args(tmp_path / "run")) == 2
    assert "already holds a run; pass --resume to continue it" in capsys.readouterr().err
    assert main([*train_args(tmp_path / "other"), "--resume", "always"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdm4mi train: error: --resume: expected nothing (continue the run) or 'auto'"), err
    assert main([*train_args(tmp_path / "other"), "--resume"]) == 2
    assert "--resume: no checkpoint to resume from in" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_slurm_requeue_signal_saves_an_hpc_checkpoint_and_requeues_then_resume_auto_goes_on(tmp_path):
    """SLURM as Lightning sees it (its environment variables, a stand-in ``scontrol``): SIGUSR1 (``#SBATCH
    --signal=SIGUSR1@90``) saves ``checkpoints/hpc_ckpt_1.ckpt`` and runs ``scontrol requeue <job>``; SLURM's
    SIGTERM then stops the run after its step; ``--resume auto`` picks the latest, and resumes from the hpc
    checkpoint when it is the only one."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cdm4mi.cli.main", *train_args(run, "training.max_steps=1000000"), "--resume", "auto"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **slurm}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(periodic_checkpoint(run), process)
        process.send_signal(signal.SIGUSR1)
        wait_for(calls.exists, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert calls.read_text() == "requeue 4242\n"
    assert process.returncode == 143 and "terminated (SIGTERM); stopped after step" in err, err[-3000:]
    hpc, last = run / "checkpoints" / "hpc_ckpt_1.ckpt", run / "checkpoints" / "last.ckpt"
    assert 4 <= step_of(hpc) <= step_of(last) < 1000000
    assert resume_checkpoint(run) == last  # the later step, or last.ckpt on a tie
    # The checkpoint Lightning saved inside its signal handler is one a run resumes from (read weights-only).
    last.unlink()
    resumed = subprocess.run([*command[:-3], "training.max_steps=40", "--resume", "auto"], cwd=REPO,
                             env={**os.environ, **slurm}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in resumed.stderr
    assert step_of(last) == 40
