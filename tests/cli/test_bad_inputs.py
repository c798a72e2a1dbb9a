"""Every CLI command on a corpus of bad inputs (tests/bad_inputs.py): truncated and corrupted DICOM/NIfTI, wrong
transfer syntaxes, missing pixel data, empty files, NaN/Inf voxels, 4D and single-slice volumes, mismatched
pairs, files that are not images, symlink loops, bad configs, bad manifests and bad checkpoints; damaged DICOM
attributes, resource bombs, pixel values their header misdescribes, outputs among the inputs, and bad numbers
on the command line and in configs.

Each run must end with exit status 2 and exactly one line on stderr, ``cdm4mi <command>: error: ...``, naming
the offending file or option; no traceback, and no Python warning or logged warning a terminal would show beside
it; nothing written where the output would go; the corpus unchanged. A bad option is refused before any input
is read (its cases name absent inputs, which the line must not name). Runs go through ``main()`` in this
process (argparse's refusals included: ``main`` returns their status); a few also through real processes (the
console script): one line there too, and ``--debug`` shows the traceback. The terminal summary
(tests/corpus_report.py) gives the cases and runs by class.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bad_inputs import REPO, Built, Case, Context, all_cases
from bad_inputs_outputs import CommandLines
from cli_runs import SMALLEST_UNET, TINY_UNET, console_script, quick_training, tiny_ct_denoiser

from cdm4mi.cli.main import main

CASES = all_cases()
RUNS = [(case, command) for case in CASES for command in case.commands]
RESULT_PROPERTY = "bad_input_line"
"""Each passed run's (run id, the error line it got, temporary folders shortened to '…') in its report's
user_properties, which pytest-xdist carries back from its workers; read by the terminal summary."""
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")
ROOT_NAMES = ("Pbad", "root/pa", "pa/low", "pa/full")  # a scan met through a root or manifest: its patient


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    """A CT denoiser trained one step on phantom patients, a 2-D point model, and their manifest."""
    root = tmp_path_factory.mktemp("good")
    manifest, ct = tiny_ct_denoiser(root)
    status = main(["train", "--config", str(REPO / "configs" / "toy2d.yaml"), f"output_dir={root / 'toy_run'}",
                   "data.num_samples=64", "training.batch_size=16", *quick_training(1)])
    assert status == 0
    return Context(ct, root / "toy_run" / "checkpoints" / "last.ckpt", manifest,
                   (*TINY_UNET, *SMALLEST_UNET, *quick_training(1)))


@dataclass(frozen=True)
class Corpus:
    built: dict[str, Built]
    folder: Path
    listing: dict[str, tuple[int, int]]
    """The corpus as written: no run may change it."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, context) -> Corpus:
    folder = tmp_path_factory.mktemp("corpus")
    built = {case.name: case.make(folder / f"case{number:03d}", context) for number, case in enumerate(CASES)}
    return Corpus(built, folder, listing(folder))


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (links not followed) with its size and modification time."""
    found = {}
    for directory, subfolders, files in os.walk(folder):
        for name in subfolders + files:
            path = Path(directory) / name
            status = path.lstat()
            found[str(path)] = (status.st_size, status.st_mtime_ns)
    return found


def arguments(command: str, case: Case, built: Built, context: Context, out: Path) -> list[str]:
    """The command line that feeds ``built`` to ``command``; outputs go under ``out``."""
    if isinstance(built, CommandLines):  # its outputs go inside its own inputs: it knows its command lines
        return list(built.argv[command])
    group = case.group
    if group.startswith("config"):
        if command == "train":
            return ["train", "--config", str(built.path)]
        return ["evaluate", "--manifest", str(context.manifest), "--folds", "2", "--config", str(built.path),
                "--out", str(out / "eval")]
    if group.startswith("checkpoint"):
        return {"sample": ["sample", "--checkpoint", str(built.path), "--out", str(out / "samples.npy"),
                           "--num-samples", "4"],
                "denoise": ["denoise", "--checkpoint", str(built.path), "--input", str(good_ct(context)),
                            "--output", str(out / "denoised.nii.gz")],
                "evaluate": ["evaluate", "--checkpoint", str(built.path), "--manifest", str(context.manifest),
                             "--out", str(out / "eval")]}[command]
    if group.startswith("manifest") or built.path.name == "manifest_folder.json":
        return {"manifest": ["manifest", "--check", str(built.path)],
                "train": ["train", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"),
                          f"data.manifest={built.path}", f"output_dir={out / 'run'}", *context.train_overrides],
                "evaluate": ["evaluate", "--checkpoint", str(context.ct_checkpoint), "--manifest", str(built.path),
                             "--out", str(out / "eval")]}[command]
    if case.name == "output under a file":
        return output_arguments(command, built.path, context)
    modality = "mri" if built.modality == "MR" else "ct"
    return {"simulate": ["simulate", "--input", str(built.path), "--output", str(out / "simulated.nii.gz"),
                         "--modality", modality],
            "denoise": ["denoise", "--checkpoint", str(context.ct_checkpoint), "--input", str(built.path),
                        "--output", str(out / "denoised.nii.gz")],
            "manifest": ["manifest", "--root", str(built.root), "--out", str(out / "manifest.json")],
            "train": ["train", "--config", str(REPO / "configs" / built.train_config), f"data.manifest={built.manifest}",
                      f"output_dir={out / 'run'}", *context.train_overrides, *mri_overrides(built),
                      *built.train_overrides],
            "evaluate": ["evaluate", "--checkpoint", str(context.ct_checkpoint), "--manifest", str(built.manifest),
                         "--split", built.split, "--out", str(out / "eval")]}[command]


def mri_overrides(built: Built) -> list[str]:
    return ["data.normalization={name: percentile}"] if built.modality == "MR" else []


def good_ct(context: Context) -> Path:
    """A good DICOM series of the phantom hospital (its first folder holding DICOM files)."""
    return next(path.parent for path in sorted((context.manifest.parent / "hospital").rglob("*.dcm")))


def output_arguments(command: str, blocker: Path, context: Context) -> list[str]:
    """Outputs placed under a file, or a file given where an output folder goes."""
    below = blocker / "below"
    return {"simulate": ["simulate", "--input", str(good_ct(context)), "--output", str(below / "x.nii.gz"),
                         "--modality", "ct"],
            "denoise": ["denoise", "--checkpoint", str(context.ct_checkpoint), "--input", str(good_ct(context)),
                        "--output", str(below / "x.nii.gz")],
            "evaluate": ["evaluate", "--checkpoint", str(context.ct_checkpoint), "--manifest", str(context.manifest),
                         "--out", str(blocker)],
            "demo": ["demo", "--out", str(blocker), "--patients", "4", "--max-steps", "1"],
            "sample": ["sample", "--checkpoint", str(context.toy_checkpoint), "--out", str(below / "s.npy"),
                       "--num-samples", "4"],
            "manifest": ["manifest", "--root", str(context.manifest.parent / "hospital"), "--out",
                         str(below / "m.json")],
            "train": ["train", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"),
                      f"data.manifest={context.manifest}", f"output_dir={below}", *context.train_overrides]}[command]


def acceptable_names(command: str, case: Case, built: Built) -> tuple[str, ...]:
    """What the error line may name: the bad file itself, or (met through a root or manifest) its patient."""
    through_data = built.root is not None and command in ("manifest", "train", "evaluate")
    return built.names + ROOT_NAMES if through_data else built.names


def message_lines(err: str) -> list[str]:
    """The lines of ``err`` other than progress bars (a run may fail while one is drawn)."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]


def shown_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The warnings Python would print to a user's terminal (its default filters hide deprecations)."""
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    return [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, hidden)]


def run_id(case: Case, command: str) -> str:
    return f"{command} :: {case.name}"


REAL_PROCESS_RUNS = ("denoise :: CT_small cut in the pixel data", "manifest :: input with ../",
                     "train :: unknown key in training")
DEBUG_RUN = "simulate :: CT_small declared a made-up syntax"


@dataclass
class RealProcesses:
    processes: dict[str, subprocess.Popen]
    folder: Path
    """Where their outputs would go."""


@pytest.fixture(scope="module")
def real_processes(corpus, context, tmp_path_factory) -> Iterator[RealProcesses]:
    """The console script on a few runs (and one with --debug), started early so they overlap the in-process runs."""
    chosen = {run_id(case, command): (case, command) for case, command in RUNS}
    started = RealProcesses({}, tmp_path_factory.mktemp("real"))
    for number, name in enumerate((*REAL_PROCESS_RUNS, DEBUG_RUN)):
        case, command = chosen[name]
        argv = arguments(command, case, corpus.built[case.name], context, started.folder / f"out{number}")
        if name == DEBUG_RUN:
            argv.insert(1, "--debug")
        started.processes[name] = subprocess.Popen([*console_script(), *argv], stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield started
    for process in started.processes.values():  # only if a test stopped before waiting for them
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(("case", "command"), RUNS, ids=[run_id(case, command) for case, command in RUNS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, command, corpus, context, real_processes, tmp_path,
                                                        capsys, caplog, record_property):
    built = corpus.built[case.name]
    argv = arguments(command, case, built, context, tmp_path / "out")
    watched = [tmp_path, built.path.parent] if case.group.startswith("config") else [tmp_path]
    before = [listing(folder) for folder in watched]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(argv)
    printed, err = capsys.readouterr()
    lines = message_lines(err) + shown_warnings(caught) + [record.getMessage() for record in caplog.records
                                                           if record.levelno >= logging.WARNING]
    assert status == 2 and len(lines) == 1, f"exit {status}, stderr and warnings:\n" + "\n".join(lines)[-3000:]
    assert lines[0].startswith(f"cdm4mi {command}: error: "), lines[0]
    assert any(name in lines[0] for name in acceptable_names(command, case, built)), lines[0]
    assert "Traceback" not in err + printed
    unread = built.unread if isinstance(built, CommandLines) else ()
    assert not any(name in lines[0] for name in unread), "an input was read before the option was checked"
    assert [listing(folder) for folder in watched] == before, "a refused run wrote files"
    record_property(RESULT_PROPERTY, (run_id(case, command), lines[0].replace(str(corpus.folder.parent), "…")))


def test_real_processes_print_one_line_and_debug_shows_the_traceback(real_processes):
    """The console script, as a user runs it: one line on stderr, exit 2; with --debug the traceback."""
    for name, process in real_processes.processes.items():
        printed, err = process.communicate(timeout=300)
        command = name.split(" :: ")[0]
        if name == DEBUG_RUN:
            assert process.returncode != 0 and "Traceback (most recent call last)" in err, err[-2000:]
            assert err.strip().splitlines()[-1].startswith("ValueError: "), err[-2000:]
            continue
        assert process.returncode == 2 and len(message_lines(err)) == 1, err[-2000:]
        assert err.startswith(f"cdm4mi {command}: error: ") and "Traceback" not in err + printed, err
    assert not any(real_processes.folder.iterdir()), "a refused run wrote files"


def test_the_corpus_is_large_and_left_unchanged(corpus):
    assert listing(corpus.folder) == corpus.listing, "a run changed its input"
    assert len(RUNS) >= 1000
    assert {case.group for case in CASES} >= {"truncated", "flipped header bytes", "wrong transfer syntax",
                                              "missing pixel data", "zero-size", "NaN/Inf voxels",
                                              "single-slice/4D volumes", "mismatched pairs", "non-image files",
                                              "symlink loops", "DICOM attributes: cannot be copied",
                                              "resource bombs: headers", "outputs inside inputs",
                                              "options: whole numbers", "config: NaN and Inf"}
