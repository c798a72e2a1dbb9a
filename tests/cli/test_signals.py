"""How a run ends when it fails or is stopped: one line on stderr and an exit status a scheduler can act on.

The outermost guard (``cdm4mi.cli.main``) is tested in-process with a sub-command made to raise each kind of
exception. Signals are tested on real processes (the console script): SIGTERM and SIGINT mid-training (exit
143 and 130; after SIGTERM a ``last.ckpt`` from which the printed ``--resume`` command continues), SIGTERM to
one rank of a two-process DDP run, and SIGTERM while ``denoise`` writes a DICOM series (no temporary folder
and no partial series left).
"""

from __future__ import annotations

import csv
import errno
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from cli_runs import REPO, console_script, periodic_checkpoint, tiny_ct_denoiser, train_args, wait_for
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cdm4mi.atomic import atomic_output, staged_folder
from cdm4mi.cli.main import MESSAGE_LIMIT, main, one_line
from cdm4mi.io.read import load_scan
from cdm4mi.termination import Terminated, is_quiet, quiet, sigterm_raises
from cdm4mi.training.stopping import as_reported

PREFIX = "cdm4mi train: "
TRACEBACK_MESSAGE = ("bad.dcm: With tag (0028,0010) got exception: required argument is not an integer\n"
                     "Traceback (most recent call last):\n  File \"filewriter.py\", line 368, in write_numbers\n"
                     "    value.append\nAttributeError: 'bytes' object has no attribute 'append'")
ERRORS = {  # raised by `cdm4mi train`'s config loading: (exit status, what the line must say)
    "RecursionError": (RecursionError("maximum recursion depth exceeded while decoding a JSON array"), 2,
                       "nested too deeply"),
    "MemoryError": (MemoryError(), 2, "too large for this machine's memory"),
    "AttributeError": (AttributeError("'NoneType' object has no attribute 'Rows'"), 1,
                       "internal error (AttributeError): 'NoneType' object has no attribute 'Rows'; rerun with --debug"),
    "TypeError": (TypeError("float() argument must be a string or a real number, not 'MultiValue'"), 1,
                  "internal error (TypeError): float() argument"),
    "IndexError": (IndexError("index 2 is out of bounds for axis 0 with size 2"), 1, "internal error (IndexError)"),
    "RuntimeError": (RuntimeError("stack expects each tensor to be equal size"), 1, "internal error (RuntimeError)"),
    "MisconfigurationException": (MisconfigurationException("`CUDAAccelerator` can not run on your system since the "
                                                            "accelerator is not available."), 2, "can not run"),
    "OSError 28": (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device; free space there"),
    "YAMLError": (yaml.YAMLError("found character '\\t' that cannot start any token"), 2, "cannot start any token"),
    "10 MB message": (ValueError("data.root: " + "x" * 10_000_000), 2, "data.root: xxx"),
    "message with a traceback": (OSError(TRACEBACK_MESSAGE), 2, "not an integer"),
}


def run_raising(monkeypatch, capsys, error: BaseException, *options: str) -> tuple[int, list[str]]:
    def load_config(*args, **kwargs):
        raise error

    monkeypatch.setattr("cdm4mi.config.load_config", load_config)  # imported by the command as it runs
    status = main(["train", *options, "--config", "run.yaml"])
    return status, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("name", list(ERRORS))
def test_every_exception_becomes_one_bounded_line_and_an_exit_status(name, monkeypatch, capsys):
    error, expected_status, says = ERRORS[name]
    status, lines = run_raising(monkeypatch, capsys, error)
    assert status == expected_status and len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"{PREFIX}error: ") and says in line, line
    assert len(line) <= len(f"{PREFIX}error: internal error (MisconfigurationException): ") + MESSAGE_LIMIT + 40
    assert "Traceback" not in line and "value.append" not in line


def test_an_input_nested_too_deeply_names_the_inputs(monkeypatch, capsys):
    status, lines = run_raising(monkeypatch, capsys, RecursionError())
    assert status == 2 and "--config run.yaml" in lines[0], lines


def test_signals_become_one_line_with_their_exit_status(monkeypatch, capsys):
    assert run_raising(monkeypatch, capsys, KeyboardInterrupt()) == (130, [f"{PREFIX}interrupted (SIGINT); "
                                                                           "unfinished outputs were removed"])
    status, lines = run_raising(monkeypatch, capsys, Terminated())
    assert status == 143 and lines == [f"{PREFIX}terminated (SIGTERM); unfinished outputs were removed"]


def test_a_stop_another_ddp_rank_reports_exits_with_its_status_silently(monkeypatch, capsys):
    assert run_raising(monkeypatch, capsys, quiet(Terminated("stopped after step 3"))) == (143, [])
    assert run_raising(monkeypatch, capsys, quiet(KeyboardInterrupt())) == (130, [])
    assert not is_quiet(as_reported(Terminated()))  # rank 0 (this process)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert is_quiet(as_reported(Terminated())) and is_quiet(as_reported(KeyboardInterrupt()))


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("bad input")])
def test_debug_reraises_with_the_traceback(error, monkeypatch, capsys):
    with pytest.raises(type(error)):
        run_raising(monkeypatch, capsys, error, "--debug")


def test_one_line_keeps_the_meaningful_line_of_a_traceback_message():
    assert one_line(OSError(TRACEBACK_MESSAGE)) == ("bad.dcm: With tag (0028,0010) got exception: required argument "
                                                    "is not an integer")
    only_traceback = RuntimeError("Traceback (most recent call last):\n  File \"x.py\"\nKeyError: 'Rows'\n")
    assert one_line(only_traceback) == "KeyError: 'Rows'"
    assert one_line(ValueError("a" * 1000), limit=50) == "a" * 49 + "…"


@pytest.mark.parametrize("writer", ["atomic_output", "staged_folder"])
def test_sigterm_in_a_with_block_removes_its_temporary_output(writer, tmp_path):
    output = tmp_path / "out" / "series"
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_raises():
        context = atomic_output(output, directory=True) if writer == "atomic_output" else staged_folder(output)
        with context as partial:
            (partial / "00001.dcm").write_bytes(b"half a series")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises at once
    # atomic_output makes the parent folder first; staged_folder stages in the nearest existing one
    assert [p.name for p in tmp_path.rglob("*")] == (["out"] if writer == "atomic_output" else [])
    assert signal.getsignal(signal.SIGTERM) == handler


def test_a_full_disk_is_reported_naming_the_output(tmp_path):
    output = tmp_path / "results"
    with pytest.raises(OSError) as raised, staged_folder(output, option="--out"):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write() into the stage raises
    assert str(raised.value) == f"[Errno 28] --out {output}: No space left on device; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_a_trainer_option_lightning_refuses_is_bad_input_naming_the_options(tmp_path, capsys):
    """Lightning's MisconfigurationException for an accelerator this machine lacks (no Apple GPU on Linux)."""
    status = main(["train", "--config", str(REPO / "configs" / "toy2d.yaml"), f"output_dir={tmp_path / 'run'}",
                   "data.num_samples=64", "training.accelerator=mps"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("cdm4mi train: error: training.accelerator=mps devices=auto ") and "MPS" in lines[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ real processes


STARTED: list[subprocess.Popen] = []


def started(argv: list[str], **options) -> subprocess.Popen:
    """``cdm4mi ARGV`` as a real process, with Ctrl-C at its default action: a job a shell starts in the background
    (``make test &``, ``nohup``) inherits SIGINT ignored, as every process it starts would, and these tests send it."""
    process = subprocess.Popen([*console_script(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **options)
    STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A test that fails while its process still runs (a run that trains until a signal) kills it, with the ranks
    it started."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            try:
                if os.getpgid(process.pid) == process.pid:  # started in a session of its own: the ranks too
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            except ProcessLookupError:
                pass
            process.communicate()


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def quick_run(run_dir: Path) -> list[str]:
    """A 60-step run of tests/cli_runs.py's tiny vector model: validation every 8 steps, checkpoints every 20."""
    return train_args(run_dir, "training.max_steps=60", "training.checkpoint_every_n_steps=20")


@pytest.mark.slow
def test_sigterm_mid_training_saves_the_step_and_the_printed_resume_command_continues(tmp_path, capfd):
    run_dir = tmp_path / "run"
    # ends by the signal alone, whenever the poll sees a checkpoint (a fixed max_steps could be reached first)
    process = started([*quick_run(run_dir), "training.max_steps=1000000"])
    wait_for(periodic_checkpoint(run_dir), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    line = last_line(err)
    stopped = re.fullmatch(r"cdm4mi train: terminated \(SIGTERM\); stopped after step (\d+), saved in (\S+); "
                           r"resume with: (.+)", line)
    assert process.returncode == 143 and stopped, err[-3000:]
    step, last = int(stopped[1]), Path(stopped[2])
    assert last == run_dir / "checkpoints" / "last.ckpt" and step >= 20
    assert torch.load(last, weights_only=True)["global_step"] == step
    assert "Traceback" not in err and not leftovers(run_dir)
    command = shlex.split(stopped[3])
    assert command[:5] == ["cdm4mi", "train", "--config", str(Path(train_args(run_dir)[2])), "--resume"]
    end = step + 24  # the printed command, with one more override that ends the resumed run
    assert main([*command[1:], f"training.max_steps={end}"]) == 0  # in-process: the wheel test runs the script
    assert capfd.readouterr().out.startswith(f"trained {end} steps\n")
    assert torch.load(last, weights_only=True)["global_step"] == end
    # Validation every 8 steps (at steps 7, 15, ...): the resumed run (logs/version_1) goes on from the saved step.
    with open(run_dir / "logs" / "version_1" / "metrics.csv") as handle:
        resumed_validations = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/loss")]
    assert resumed_validations and min(resumed_validations) >= step and max(resumed_validations) == max(range(7, end, 8))


@pytest.mark.slow
def test_sigint_mid_training_exits_130_keeping_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # ends by the signal alone: on a quiet machine the tiny model trains thousands of steps a second
    process = started([*quick_run(run_dir), "training.max_steps=1000000"])
    wait_for((run_dir / "checkpoints" / "last.ckpt").exists, process)  # ModelCheckpoint writes it after step0000020.ckpt
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    line = last_line(err)
    assert process.returncode == 130, err[-3000:]
    assert line.startswith("cdm4mi train: interrupted (SIGINT); no checkpoint is written mid-step; the last checkpoint "
                           f"{run_dir / 'checkpoints' / 'last.ckpt'} (step "), line
    assert "resume with: cdm4mi train --config" in line and "Traceback" not in err
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step > 0 and step % 20 == 0, step
    assert not leftovers(run_dir)


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Rank 1 alone gets SIGTERM: every rank learns of it at the end of the step (a collective question), all
    stop after that step, and the checkpoint holds it; nothing hangs. Rank 0 alone prints the line."""
    run_dir = tmp_path / "run"
    process = started([*quick_run(run_dir), "training.max_steps=2000", "training.accelerator=cpu",
                       "training.devices=2", "training.strategy=ddp"], start_new_session=True)
    try:
        wait_for(periodic_checkpoint(run_dir), process)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children  # Lightning starts rank 1 as a child of rank 0
        os.kill(int(children[0]), signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stops = re.findall(r"cdm4mi train: terminated \(SIGTERM\); stopped after step (\d+), saved in", err)
    assert process.returncode == 143 and len(stops) == 1 and err.count("cdm4mi train: ") == 1, err[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == int(stops[0])


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory) -> tuple[Path, Path]:
    """A CT denoiser trained for one step, and a 160-slice NIfTI scan: writing it as DICOM takes long enough
    to be caught in the middle."""
    root = tmp_path_factory.mktemp("hospital")
    _, checkpoint = tiny_ct_denoiser(root)
    scan = load_scan(next(path.parent for path in sorted((root / "hospital").rglob("*.dcm"))))
    nib.save(nib.Nifti1Image(np.repeat(scan.array, 80, axis=0), scan.affine), root / "long.nii")
    return checkpoint, root / "long.nii"


@pytest.mark.slow
def test_sigterm_while_denoise_writes_a_dicom_series_leaves_nothing(ct_model, tmp_path):
    checkpoint, scan = ct_model
    out = tmp_path / "out"
    out.mkdir()
    process = started(["denoise", "--checkpoint", str(checkpoint), "--input", str(scan), "--output",
                       str(out / "series"), "--steps", "1", "--batch-size", "80"])

    def writing() -> bool:
        """the staged series holds its first file"""
        return any(folder.name.startswith(".series.") and any(folder.glob("*")) for folder in out.iterdir())

    wait_for(writing, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-3000:]
    assert last_line(err) == "cdm4mi denoise: terminated (SIGTERM); unfinished outputs were removed"
    assert list(out.iterdir()) == [] and "Traceback" not in err
