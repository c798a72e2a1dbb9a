"""Every command refuses to replace an existing output unless ``--overwrite`` is given, says so in one line,
and leaves the existing output byte for byte as it was; ``train --overwrite`` starts a run over."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from cli_runs import train_args
from scan_files import CT_SMALL

from cdm4mi.atomic import staged_folder
from cdm4mi.cli.main import main


def digest(path: Path) -> str:
    """The bytes of a file, or of every file under a folder (names included)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(str(p.relative_to(path.parent)).encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny vector model, a CT slice, and one existing output file and folder."""
    root = tmp_path_factory.mktemp("outputs")
    assert main(train_args(root / "run", "training.max_steps=4")) == 0
    (root / "ct.dcm").write_bytes(Path(CT_SMALL).read_bytes())
    (root / "taken.nii.gz").write_bytes(b"an earlier result")
    (root / "taken_dir").mkdir()
    (root / "taken_dir" / "metrics.csv").write_text("earlier,results\n")
    (root / "hospital" / "p1").mkdir(parents=True)
    return {"root": root, "checkpoint": root / "run" / "checkpoints" / "last.ckpt"}


# command line (with {placeholders}), the existing output it must not replace
COMMANDS = {
    "simulate": (["simulate", "--input", "{root}/ct.dcm", "--output", "{root}/taken.nii.gz", "--modality", "ct"],
                 "taken.nii.gz"),
    "manifest --out": (["manifest", "--root", "{root}/hospital", "--out", "{root}/taken.nii.gz"], "taken.nii.gz"),
    "sample --out": (["sample", "--checkpoint", "{checkpoint}", "--out", "{root}/taken.nii.gz", "--num-samples", "4"],
                     "taken.nii.gz"),
    "sample --png": (["sample", "--checkpoint", "{checkpoint}", "--out", "{root}/new.pt", "--num-samples", "4",
                      "--png", "{root}/taken.nii.gz"], "taken.nii.gz"),
    "evaluate --out": (["evaluate", "--checkpoint", "{checkpoint}", "--out", "{root}/taken_dir", "--num-samples", "64"],
                       "taken_dir"),
    "denoise --output": (["denoise", "--checkpoint", "{checkpoint}", "--input", "{root}/ct.dcm",
                          "--output", "{root}/taken.nii.gz"], "taken.nii.gz"),
    "demo --out": (["demo", "--out", "{root}/taken_dir"], "taken_dir"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_existing_output_needs_overwrite(command, world, capsys):
    arguments, taken = COMMANDS[command]
    existing = world["root"] / taken
    before = digest(existing)
    places = {name: str(path) for name, path in world.items()}
    status = main([a.format(**places) for a in arguments])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"cdm4mi {arguments[0]}: error:") and "already exists (pass --overwrite" in lines[0]
    assert digest(existing) == before
    assert not (world["root"] / "new.pt").exists(), "no partial output"


def test_train_refuses_a_run_folder_then_starts_over_with_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, "training.max_steps=8")) == 0
    (run_dir / "notes.txt").write_text("mine")
    assert main(train_args(run_dir, "training.max_steps=4")) == 2
    assert "already holds a run; pass --resume to continue it, --overwrite to start over" in capsys.readouterr().err
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert main(["train", "--overwrite", *train_args(run_dir, "training.max_steps=4")[1:]]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step0000004.ckpt"]
    assert (run_dir / "notes.txt").read_text() == "mine", "only what a run writes is deleted"
    assert len(list((run_dir / "logs").glob("version_*"))) == 1
    assert main(["train", "--overwrite", "--resume", *train_args(run_dir)[1:]]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_staged_folder_moves_results_in_on_success_and_leaves_no_trace_on_failure(tmp_path):
    out = tmp_path / "new" / "eval"
    with pytest.raises(RuntimeError), staged_folder(out) as stage:
        (stage / "metrics.csv").write_text("partial\n")
        raise RuntimeError("the third patient's scan is damaged")
    assert list(tmp_path.iterdir()) == []  # not even the parent folder
    with staged_folder(out) as stage:
        (stage / "figures").mkdir()
        (stage / "metrics.csv").write_text("first\n")
    assert (out / "metrics.csv").read_text() == "first\n" and (out / "figures").is_dir()
    with pytest.raises(FileExistsError, match="--overwrite"), staged_folder(out) as stage:
        (stage / "metrics.csv").write_text("second\n")
    assert (out / "metrics.csv").read_text() == "first\n"
    with staged_folder(out, overwrite=True) as stage:
        (stage / "metrics.csv").write_text("second\n")
    assert (out / "metrics.csv").read_text() == "second\n" and (out / "figures").is_dir()  # others kept
    assert sorted(path.name for path in out.parent.iterdir()) == ["eval"]  # no stage left over
    (tmp_path / "a_file").write_text("in the way\n")
    with pytest.raises(ValueError, match="a_file is a file"), staged_folder(tmp_path / "a_file" / "eval"):
        pass
