"""Outputs that cannot race, ``--overwrite`` that removes only what cdm4mi wrote, and no output inside what a
command reads: two real ``denoise`` processes to one new file, a target that appears between the write and
the rename, a full disk, foreign files in a training folder, ``evaluate --out`` among a patient's scans."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_runs import REPO, TINY_UNET, console_script, quick_training, train_args
from cohorts import entry, make_nifti_patients, write_manifest

from cdm4mi import atomic
from cdm4mi.atomic import RECORD, atomic_output, recorded, remove_recorded, staged_folder
from cdm4mi.cli.main import main

PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # drawn on stderr while sampling
APPEARED = "appeared while this run was writing it (another run?); nothing was replaced"


def error_line(capsys, command: str) -> str:
    """The one stderr line of a refused in-process run."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cdm4mi {command}: error: "), lines
    return lines[0]


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --------------------------------------------------------------------------- the rename that replaces nothing


@pytest.fixture(params=["renameat2", "link or rename"])
def rename_kind(request, monkeypatch):
    """Both ways to rename without replacing: renameat2, and the portable fallback where libc lacks it."""
    if request.param == "renameat2" and atomic._renameat2 is None:
        pytest.skip("this C library has no renameat2")
    if request.param == "link or rename":
        monkeypatch.setattr(atomic, "_renameat2", None)
    return request.param


def test_a_file_that_appears_while_writing_is_never_replaced(tmp_path, rename_kind):
    target = tmp_path / "denoised.nii.gz"
    with pytest.raises(FileExistsError, match="--output: .*denoised.nii.gz " + re.escape(APPEARED)), \
            atomic_output(target, option="--output") as temporary:
        temporary.write_bytes(b"this run")
        target.write_bytes(b"another run")  # created after the existence check, before the rename
    assert target.read_bytes() == b"another run"
    assert entries(tmp_path) == ["denoised.nii.gz"], "the temporary is cleaned up"
    with atomic_output(target, overwrite=True) as temporary:  # --overwrite: replacing is intended
        temporary.write_bytes(b"this run")
    assert target.read_bytes() == b"this run" and entries(tmp_path) == ["denoised.nii.gz"]


def test_a_folder_that_appears_while_writing_is_never_replaced_even_empty(tmp_path, rename_kind):
    target = tmp_path / "series"
    with pytest.raises(FileExistsError, match=re.escape(APPEARED)), \
            atomic_output(target, directory=True) as temporary:
        (temporary / "00001.dcm").write_bytes(b"this run")
        target.mkdir()  # empty: a plain os.rename would silently replace it
    assert target.is_dir() and list(target.iterdir()) == []
    assert entries(tmp_path) == ["series"]
    with atomic_output(target, overwrite=True, directory=True) as temporary:
        (temporary / "00001.dcm").write_bytes(b"this run")
    assert (target / "00001.dcm").read_bytes() == b"this run" and entries(tmp_path) == ["series"]


def test_staged_folder_replaces_no_entry_that_appeared_meanwhile(tmp_path, rename_kind, monkeypatch):
    out = tmp_path / "eval"
    rename = atomic.rename_noreplace

    def another_run_first(source, target):  # another run's metrics.csv lands after every check, before the move
        Path(target).write_text("another run\n")
        rename(source, target)

    monkeypatch.setattr(atomic, "rename_noreplace", another_run_first)
    with pytest.raises(FileExistsError, match="--output: .*metrics.csv " + re.escape(APPEARED)), \
            staged_folder(out) as stage:
        (stage / "metrics.csv").write_text("this run\n")
    assert (out / "metrics.csv").read_text() == "another run\n"
    assert entries(tmp_path) == ["eval"], "the stage is cleaned up"


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "metrics.csv"
    with pytest.raises(OSError) as caught, atomic_output(target) as temporary:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a write on a full disk raises
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert not target.exists() and entries(tmp_path / "out") == []


def test_a_forged_record_never_leads_overwrite_out_of_its_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "precious").mkdir()
    (folder / "logs").mkdir()
    (folder / RECORD).write_text(json.dumps({"format": "cdm4mi-run/1", "entries": ["../precious", "..", "logs"]}))
    assert recorded(folder) == {"logs"}
    remove_recorded(folder, ["../precious", "..", "logs"])
    assert (tmp_path / "precious").is_dir() and not (folder / "logs").exists()


# ----------------------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """4 small NIfTI patients and their manifest; a fifth (test) patient's folder is a link out of the data root."""
    root = tmp_path_factory.mktemp("races")
    make_nifti_patients(root / "data", count=4, shape=(2, 32, 32))
    make_nifti_patients(root / "elsewhere", count=1, shape=(2, 32, 32))
    (root / "data" / "linked").symlink_to(root / "elsewhere" / "case00", target_is_directory=True)
    manifest = write_manifest(root / "manifest.json", [
        entry("P0", "case00"), entry("P1", "case01"), entry("P2", "case02", "val"), entry("P3", "case03", "test"),
        entry("P4", "linked", "test")], root="data")
    return {"root": root, "data": root / "data", "manifest": manifest}


@pytest.fixture(scope="module")
def ct_checkpoint(cohort) -> Path:
    """A CT denoiser trained 1 step on the cohort."""
    run_dir = cohort["root"] / "run"
    status = main(["train", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"),
                   f"data.manifest={cohort['manifest']}", f"output_dir={run_dir}", *TINY_UNET, *quick_training(1),
                   "network.channel_mult=[1]", "network.attention_levels=[false]"])
    assert status == 0
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_two_denoise_processes_to_one_new_output_one_wins_whole(cohort, ct_checkpoint, tmp_path):
    output = tmp_path / "denoised.nii.gz"
    argv = ["denoise", "--checkpoint", str(ct_checkpoint), "--input", str(cohort["data"] / "case03" / "low.nii.gz"),
            "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([*console_script(), *argv, "--seed", str(seed)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for seed in (0, 1)]
    results = [process.communicate(timeout=300) for process in processes]
    codes = [process.returncode for process in processes]
    assert sorted(codes) == [0, 2], results
    winner, loser = codes.index(0), codes.index(2)
    lines = [line for line in re.split(r"[\r\n]", results[loser][1]) if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and lines[0].startswith("cdm4mi denoise: error: ") and str(output) in lines[0], lines
    # the loser stopped at the start ('already exists') or, racing to the end, at the rename ('appeared')
    assert "already exists (pass --overwrite" in lines[0] or APPEARED in lines[0], lines[0]
    assert entries(tmp_path) == ["denoised.nii.gz"], "no temporary left behind"
    written = np.asarray(nib.load(output).dataobj)
    for seed in (0, 1):  # each seed's result again, in-process: the file is the winner's, whole
        assert main([*argv[:-1], str(tmp_path / f"seed{seed}.nii.gz"), "--seed", str(seed)]) == 0
    expected = [np.asarray(nib.load(tmp_path / f"seed{seed}.nii.gz").dataobj) for seed in (0, 1)]
    assert written.shape == expected[0].shape == (2, 32, 32)
    assert np.allclose(written, expected[winner], atol=1e-3)
    assert not np.allclose(written, expected[loser], atol=1e-3), "the two seeds must give different results"


# ------------------------------------------------------------------------------------------ ownership


def test_train_overwrite_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "mine.csv").write_text("a user's own log\n")
    (run_dir / "config.yaml").write_text("my: own config\n")
    for overwrite in (["--overwrite"], []):
        assert main([train_args(run_dir)[0], *overwrite, *train_args(run_dir)[1:]]) == 2
        line = error_line(capsys, "train")
        assert f"output_dir: {run_dir} holds files cdm4mi did not write (logs/, config.yaml); remove them yourself" \
               in line, line
    assert entries(run_dir) == ["config.yaml", "logs"] and entries(run_dir / "logs") == ["mine.csv"]
    assert (run_dir / "config.yaml").read_text() == "my: own config\n"


def test_train_overwrite_removes_only_what_its_earlier_run_wrote(tmp_path):
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, "training.max_steps=4")) == 0
    assert recorded(run_dir) == {"checkpoints", "config.yaml", "logs", "tensorboard"}  # no previews were drawn
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "previews").mkdir()  # a user's folder of that name, made after the run
    (run_dir / "previews" / "keep.png").write_bytes(b"mine")
    (run_dir / "logs" / "version_0" / "extra.csv").write_text("inside a recorded folder: the run's\n")
    assert main(["train", "--overwrite", *train_args(run_dir, "training.max_steps=4")[1:]]) == 2  # previews/ is foreign
    (run_dir / "previews" / "keep.png").rename(tmp_path / "keep.png")
    (run_dir / "previews").rmdir()
    assert main(["train", "--overwrite", *train_args(run_dir, "training.max_steps=4")[1:]]) == 0
    assert entries(run_dir) == [RECORD, "checkpoints", "config.yaml", "logs", "notes.txt", "tensorboard"]
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert entries(run_dir / "logs") == ["version_0"] and not (run_dir / "logs" / "version_0" / "extra.csv").exists()


# ------------------------------------------------------------------------------------- outputs inside inputs


@pytest.mark.parametrize(("inside", "named"), [("data", "the data root"), ("data/case03/eval", "the data root"),
                                               ("elsewhere/case00/eval", "the scan folder")])
def test_evaluate_out_inside_the_data_is_refused_and_writes_nothing(cohort, inside, named, capsys):
    out = cohort["root"] / inside
    before = sorted(str(path) for path in cohort["root"].rglob("*"))
    # the checkpoint is never loaded: the refusal comes first
    status = main(["evaluate", "--checkpoint", str(cohort["root"] / "model.ckpt"), "--manifest",
                   str(cohort["manifest"]), "--out", str(out), "--overwrite"])
    assert status == 2
    line = error_line(capsys, "evaluate")
    assert f"--output: {out} is or lies inside {named} " in line and "cdm4mi never writes into what it reads" in line, line
    assert sorted(str(path) for path in cohort["root"].rglob("*")) == before


def test_train_output_dir_inside_the_data_is_refused(cohort, capsys):
    output_dir = cohort["data"] / "case00" / "run"
    status = main(["train", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"),
                   f"data.manifest={cohort['manifest']}", f"output_dir={output_dir}", *TINY_UNET, *quick_training(1)])
    assert status == 2
    assert f"output_dir: {output_dir} is or lies inside the data root {cohort['data']}" in error_line(capsys, "train")
    assert not output_dir.exists()
