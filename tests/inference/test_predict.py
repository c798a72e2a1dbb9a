"""``cdm4mi denoise`` and ``cdm4mi evaluate`` on many patients (``cdm4mi.inference.predict``): a manifest's split or
a folder of scans, spread over processes by Lightning's ``Trainer.predict``. Two real CPU processes (gloo;
started by Lightning, and by torchrun) denoise every patient exactly once, and their outputs are bit-identical
to one process's and to ``cdm4mi denoise`` of each scan alone."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_runs import REPO, TINY_UNET, cli
from cohorts import entry, make_nifti_patients, write_manifest

from cdm4mi.cli.main import main
from cdm4mi.config import load_config
from cdm4mi.training.module import DiffusionModule

PATIENTS = [f"P{i:02d}" for i in range(5)]  # the test split; one more patient trains
CT_STATE = {"modality": "CT", "normalization": {"name": "hu_window"}}
LINE = re.compile(r"(P\d\d): (\d+) slices, warm start t=(\d+), [\d.]+ s \(process (\d+)\): (\S+)")


def random_checkpoint(path: Path) -> Path:
    """configs/ldct_2d_concat.yaml's U-Net made tiny, every weight drawn at random (an untrained model returns
    its input: its output layer starts at zero), saved as ``cdm4mi train`` saves a checkpoint."""
    config = load_config(REPO / "configs" / "ldct_2d_concat.yaml", TINY_UNET)
    module = DiffusionModule(config.model_dump(mode="json"), CT_STATE)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "cdm4mi": module.model_card()}, path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    make_nifti_patients(root / "data", count=6, shape=(3, 32, 32))
    patients = [entry(name, f"case{i:02d}", "test") for i, name in enumerate(PATIENTS)]
    manifest = write_manifest(root / "data" / "manifest.json", [*patients, entry("P99", "case05", "train")])
    return {"root": root, "manifest": manifest, "checkpoint": random_checkpoint(root / "model.ckpt")}


def batch_args(cohort: dict[str, Path], output: Path, *extra: str) -> list[str]:
    """Two samples per patient: the draws add fresh noise, so each patient's seed shows in its output."""
    return ["denoise", "--checkpoint", str(cohort["checkpoint"]), "--input", str(cohort["manifest"]),
            "--output", str(output), "--samples", "2", "--device", "cpu", *extra]


def run_cdm4mi(*args: str, launcher: tuple[str, ...] = ("-m", "cdm4mi.cli.main")) -> subprocess.CompletedProcess:
    """A real run, one CPU thread per process: a convolution's float sums depend on the thread count (2 threads
    against 1 moved outputs by 1e-5 HU), and Lightning gives each of N processes 1/N of the cores."""
    result = subprocess.run([sys.executable, *launcher, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def done_lines(stdout: str, patients: list[str] = PATIENTS) -> dict[str, int]:
    """patient -> the process that denoised it, from the lines ``cdm4mi denoise`` prints; each patient once."""
    found = LINE.findall(stdout)
    names = [name for name, *_ in found]
    assert sorted(names) == patients, stdout[-3000:]  # every patient, none twice
    return {name: int(rank) for name, _, _, rank, _ in found}


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: read(path) for path in sorted(folder.iterdir())}


def assert_same_outputs(folder: Path, reference: Path) -> None:
    expected = outputs(reference)
    assert sorted(expected) == sorted(f"{name}{kind}.nii.gz" for name in PATIENTS for kind in ("", "_std"))
    got = outputs(folder)
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert np.array_equal(got[name], array), name


@pytest.fixture(scope="module")
def one_process(cohort, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("one") / "denoised"
    return output, run_cdm4mi(*batch_args(cohort, output)).stdout


def test_one_process_denoises_the_test_split_as_single_scans_are_denoised(cohort, one_process, tmp_path, capsys):
    output, stdout = one_process
    assert set(done_lines(stdout).values()) == {0}
    assert "denoised 5 of 5 patients with 1 process in" in stdout
    # P02 alone through the single-scan path, same options, seed and thread count: the same voxels
    single, threads = tmp_path / "P02.nii.gz", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli(capsys, "denoise", "--checkpoint", cohort["checkpoint"], "--input",
            cohort["root"] / "data/case02/low.nii.gz", "--output", single, "--samples", "2", "--device", "cpu")
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(read(single), read(output / "P02.nii.gz"))
    assert np.array_equal(read(tmp_path / "P02_std.nii.gz"), read(output / "P02_std.nii.gz"))
    assert not np.array_equal(read(output / "P02.nii.gz"), read(cohort["root"] / "data/case02/low.nii.gz"))
    assert not (output / "P99.nii.gz").exists()  # a training patient


@pytest.mark.slow
def test_two_processes_started_by_lightning_do_each_patient_once_with_the_same_outputs(cohort, one_process, tmp_path):
    output = tmp_path / "denoised"
    result = run_cdm4mi(*batch_args(cohort, output, "--devices", "2"))
    ranks = done_lines(result.stdout)
    assert ranks == {"P00": 0, "P01": 1, "P02": 0, "P03": 1, "P04": 0}  # Lightning's sampler: every other patient
    assert "denoised 5 of 5 patients with 2 processes in" in result.stdout
    assert_same_outputs(output, one_process[0])
    # A requeued job: one patient's outputs are gone; two processes share one patient (one gets an idle item).
    for name in ("P03.nii.gz", "P03_std.nii.gz"):
        (output / name).unlink()
    again = run_cdm4mi(*batch_args(cohort, output, "--devices", "2", "--skip-existing"))
    assert done_lines(again.stdout, ["P03"]) == {"P03": 0}
    assert "denoised 1 of 1 patients with 2 processes in" in again.stdout and "; 4 skipped" in again.stdout
    assert_same_outputs(output, one_process[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_started_by_torchrun_do_each_patient_once_with_the_same_outputs(cohort, one_process, tmp_path):
    output = tmp_path / "denoised"
    torchrun = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                "-m", "cdm4mi.cli.main")
    result = run_cdm4mi(*batch_args(cohort, output, "--devices", "2"), launcher=torchrun)
    assert set(done_lines(result.stdout).values()) == {0, 1}
    assert_same_outputs(output, one_process[0])


def test_processes_started_by_torchrun_without_devices_are_refused(cohort, tmp_path, capsys, monkeypatch):
    """Without --devices each process torchrun started would take itself for the only one and do every patient.
    The check reads torchrun's environment before any work, so it is seen here in-process, as rank 0 of two."""
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "TORCHELASTIC_RUN_ID": "test"}
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    assert main(batch_args(cohort, tmp_path / "other")) == 2
    assert capsys.readouterr().err == (
        "cdm4mi denoise: error: --devices: 2 processes were started (torchrun: WORLD_SIZE) but --devices auto on "
        "--num-nodes 1 makes 1; pass --devices 2 (processes per node) and --num-nodes (nodes)\n")
    assert not (tmp_path / "other").exists()


def test_a_folder_of_scans_names_outputs_after_the_files_and_a_bad_scan_stops_only_itself(cohort, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in (0, 1):
        (folder / f"case{i:02d}.nii.gz").write_bytes((cohort["root"] / f"data/case{i:02d}/low.nii.gz").read_bytes())
    (folder / "broken.nii.gz").write_text("not a scan\n")
    (folder / "notes.txt").write_text("scanned on the old scanner\n")
    output = tmp_path / "denoised"
    args = ["denoise", "--checkpoint", str(cohort["checkpoint"]), "--input", str(folder), "--output", str(output),
            "--device", "cpu"]
    status = main(args)
    out, err = capsys.readouterr()
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("cdm4mi denoise: error: 1 of 3 patients failed, the first broken: ") and "broken.nii.gz" in err
    assert "rerun with --skip-existing" in err and "ignored 1 files that are not NIfTI files or folders: notes.txt" in out
    assert sorted(path.name for path in output.iterdir()) == ["case00.nii.gz", "case01.nii.gz"]
    (folder / "broken.nii.gz").unlink()
    assert main([*args, "--skip-existing"]) == 0
    assert "nothing to do: the outputs of all 2 patients exist" in capsys.readouterr().out
    assert main(args) == 2  # without --skip-existing an existing output is refused, before any work
    assert "case00.nii.gz already exists (pass --overwrite to replace it)" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--devices", "2"], ["--split", "val"], ["--skip-existing"]])
def test_the_batch_options_are_refused_for_one_scan(cohort, tmp_path, capsys, option):
    status = main(["denoise", "--checkpoint", str(cohort["checkpoint"]), "--input",
                   str(cohort["root"] / "data/case00/low.nii.gz"), "--output", str(tmp_path / "out.nii.gz"), *option])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"cdm4mi denoise: error: {option[0]}: only for many patients"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_evaluate_on_two_processes_writes_the_report_of_one(cohort, tmp_path, capsys):
    args = ["evaluate", "--checkpoint", str(cohort["checkpoint"]), "--manifest", str(cohort["manifest"]),
            "--samples", "2", "--device", "cpu"]
    run_cdm4mi(*args, "--out", str(tmp_path / "two"), "--devices", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes
    try:
        cli(capsys, *args, "--out", tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    for name in ("metrics.csv", "summary.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    figures = sorted(path.name for path in (tmp_path / "one" / "figures").iterdir())
    assert len(figures) == 5 and sorted(path.name for path in (tmp_path / "two" / "figures").iterdir()) == figures
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]  # no stage left behind


def test_the_process_group_is_destroyed_once_the_results_are_gathered(ddp_in_this_process):
    """Left to the interpreter's shutdown, a gloo group can abort the process after its work is written (exit
    status -6, seen in CI). One DDP process here (a gloo group of one, in this process) shows it is destroyed."""
    import torch.distributed as dist

    from cdm4mi.inference.predict import predict_patients

    run = predict_patients(torch.nn.Linear(2, 2), lambda model, index: index * 10, 3, strategy="ddp", devices=1)
    assert run.results() == [0, 10, 20] and run.world_size == 1
    assert not dist.is_initialized()
