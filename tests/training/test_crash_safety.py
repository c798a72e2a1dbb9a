"""Crash-safe training and safe checkpoints: a NaN/Inf loss stops (or skips) without poisoning a checkpoint,
checkpoint files are replaced atomically, and a checkpoint carrying a pickle payload is refused by every
command that reads checkpoints, without the payload ever running. (SIGKILL + resume: tests/training/test_training.py.)"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from cli_runs import train_args

from cdm4mi.cli.main import main
from cdm4mi.diffusion import DiffusionObjective
from cdm4mi.training.safety import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[2]


def poison_losses(monkeypatch, calls: set[int], value: float = float("nan")) -> None:
    """The training loss becomes ``value`` on the given 0-based training batches, as in a diverging run
    (validation losses, computed with a fixed generator, are left alone)."""
    original = DiffusionObjective.loss
    count = {"training": 0}

    def loss(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if "generator" in kwargs:
            return result
        count["training"] += 1
        return result * value if count["training"] - 1 in calls else result

    monkeypatch.setattr(DiffusionObjective, "loss", loss)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def finite_checkpoint(path: Path) -> dict:
    checkpoint = torch.load(path, weights_only=True)
    for key in ("state_dict", "current_model_state"):
        assert all(bool(torch.isfinite(v).all()) for v in checkpoint[key].values() if v.is_floating_point()), key
    return checkpoint


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    poison_losses(monkeypatch, calls=set(range(10, 1000)))  # training_step calls: the 11th batch on
    status = main(train_args(tmp_path / "run"))
    line = one_error_line(capsys)
    assert status == 2 and line.startswith("cdm4mi train: error: training.nonfinite_loss=stop: the training loss is nan")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"The last good checkpoint is kept: {last}" in line
    assert finite_checkpoint(last)["global_step"] == 8
    assert not list(last.parent.glob(".*")), "no temporary files left behind"


def test_skip_drops_bad_batches_and_finishes(tmp_path, monkeypatch, capsys):
    poison_losses(monkeypatch, calls={3, 4, 9}, value=float("inf"))
    assert main(train_args(tmp_path / "run", "training.nonfinite_loss=skip")) == 0
    checkpoint = finite_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 16  # skipped batches advance the step counter, without an update
    assert "trained 16 steps" in capsys.readouterr().out


def test_skip_stops_after_too_many_bad_batches_in_a_row(tmp_path, monkeypatch, capsys):
    poison_losses(monkeypatch, calls=set(range(5, 1000)))
    status = main(train_args(tmp_path / "run", "training.nonfinite_loss=skip", "training.max_nonfinite_skips=3"))
    line = one_error_line(capsys)
    assert status == 2 and "training.max_nonfinite_skips: the training loss is nan" in line
    assert "the 4th non-finite batch in a row" in line
    # A skipped batch still advances the step counter (no optimizer update): steps 6-8 were skipped batches.
    assert finite_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    """An overflowing update (weights -> inf at the 6th step): the step-8 checkpoint is refused before it is
    written, so last.ckpt stays the good step-4 one."""
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.state and next(iter(self.state.values()))["step"] == 6:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    # The loss of the poisoned network is NaN from step 7 on: skip those batches so the save is reached.
    status = main(train_args(tmp_path / "run", "training.nonfinite_loss=skip", "training.max_nonfinite_skips=1000"))
    line = one_error_line(capsys)
    assert status == 2 and "training: the weights became non-finite by step 8" in line
    assert "that checkpoint was not written" in line
    assert finite_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.ones(3)}, path)
    good = path.read_bytes()

    def dies_halfway(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(3)}, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


class Payload:
    """Unpickling this runs ``exec`` of code that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(train_args(run_dir, "training.max_steps=4")) == 0
    return run_dir


@pytest.mark.parametrize("where", ["hyper_parameters", "top level", "callbacks"])
def test_checkpoint_with_a_pickle_payload_is_refused_everywhere(where, trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "payload_ran"
    {"hyper_parameters": checkpoint["hyper_parameters"], "top level": checkpoint,
     "callbacks": checkpoint["callbacks"]}[where]["extra"] = Payload(marker)
    bad = tmp_path / "model.ckpt"
    torch.save(checkpoint, bad)
    resume_dir = tmp_path / "resume"
    (resume_dir / "checkpoints").mkdir(parents=True)
    (resume_dir / "checkpoints" / "last.ckpt").write_bytes(bad.read_bytes())
    runs = {
        "sample": ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "samples.pt")],
        "denoise": ["denoise", "--checkpoint", str(bad), "--input", str(tmp_path / "in.nii.gz"),
                    "--output", str(tmp_path / "out.nii.gz")],
        "evaluate": ["evaluate", "--checkpoint", str(bad), "--out", str(tmp_path / "eval")],
        "train --resume": ["train", "--resume", *train_args(resume_dir, "training.max_steps=8")[1:]],
    }
    for command, argv in runs.items():
        status = main(argv)
        line = one_error_line(capsys)
        assert status == 2 and "is not a loadable" in line and "it carries code (exec)" in line, (command, line)
        assert not marker.exists(), f"{command} ran the payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "resume"]
    # The payload is live: an unsafe load would have run it.
    torch.load(bad, weights_only=False)
    assert marker.read_text() == "ran"
