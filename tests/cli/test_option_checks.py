"""Every numeric option of every command, and NaN/Inf in configs, refused up front; argparse's refusals in one line.

The bad values themselves (tests/bad_inputs_options.py) run in the bad-input corpus (tests/cli/test_bad_inputs.py):
each must end the run with exit status 2 and one error line naming the option (or config key), before any file
is read and with nothing written. Here: that every command with numbers is covered, that the checks refuse
nothing a user may mean, and the form of argparse's refusal (one line naming the command, its --help; no usage
block; ``main`` returns 2 where argparse would exit, 0 for --help and --version).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
from bad_inputs_options import option_cases

from cdm4mi.cli.main import MESSAGE_LIMIT, build_parser, main

REFUSED = {  # command line -> the one line on stderr
    "denoise --checkpoint c --input i --output o --steps -5":
        "cdm4mi denoise: error: argument --steps: must be >= 1, got -5; see cdm4mi denoise --help",
    "denoise --checkpoint c --input i":
        "cdm4mi denoise: error: the following arguments are required: --output; see cdm4mi denoise --help",
    "train --config c.yaml --stepz 5":
        "cdm4mi train: error: unrecognized arguments: --stepz; see cdm4mi train --help",
    "evaluate --out o --window 0 0":
        "cdm4mi evaluate: error: argument --window: LOW must be below HIGH, got 0 0; see cdm4mi evaluate --help",
    "": "cdm4mi: error: the following arguments are required: COMMAND; see cdm4mi --help",
}


def test_every_command_with_numbers_is_covered():
    runs = [(case, command) for case in option_cases() for command in case.commands]
    assert {command for _, command in runs} == {"denoise", "sample", "evaluate", "simulate", "manifest", "demo", "train"}
    assert len(runs) >= 40


@pytest.mark.parametrize("line", list(REFUSED))
def test_a_refused_command_line_is_one_line_naming_the_command(line, capsys):
    assert main(line.split()) == 2
    printed, err = capsys.readouterr()
    assert err.splitlines() == [REFUSED[line]] and printed == ""


def test_a_refusal_quoting_a_huge_value_is_cut(capsys):
    assert main(["sample", "--checkpoint", "c", "--out", "o.npy", "--device", "x" * 100_000]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("cdm4mi sample: error: argument --device: expected cpu") and line.endswith("…; see cdm4mi "
                                                                                                   "sample --help")
    assert len(line) == len("cdm4mi sample: error: ; see cdm4mi sample --help") + MESSAGE_LIMIT


def test_help_and_version_exit_0(capsys):
    assert main(["--version"]) == 0 and main(["denoise", "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("cdm4mi ") and "--checkpoint" in printed


GOOD = {  # command line -> parsed values: the checks refuse nothing a user may mean
    "denoise --steps 1 --eta 0 --t-start auto --draws 1 --batch-size 1 --seed 0 --device cpu":
        {"steps": 1, "eta": 0.0, "t_start": None, "samples": 1, "batch_size": 1, "seed": 0, "device": "cpu"},
    "denoise --t-start 0 --eta 1.5 --device auto": {"t_start": 0, "eta": 1.5},
    "evaluate --window -1000 -999.5 --folds 2 --t-start 7": {"window": [-1000.0, -999.5], "folds": 2, "t_start": 7},
    "simulate --dose 1 --flux 1e5 --own-noise 0 --electronic-noise 0 --sigma-percent 0 --kernel-cutoff 0.3":
        {"dose": 1.0, "flux": 1e5, "own_noise": 0.0, "electronic_noise": 0.0, "sigma_percent": 0.0,
         "kernel_cutoff": 0.3},
    "simulate --kernel-cutoff match": {"kernel_cutoff": "match"},
    "manifest --split 1,0,0 --dose-fraction 1 --seed 3": {"split": (1.0, 0.0, 0.0), "dose_fraction": 1.0, "seed": 3},
    "sample --snr 1e-3 --n-corrector 0 --guidance-scale 0 --num-samples 1": {"snr": 1e-3, "n_corrector": 0,
                                                                             "guidance_scale": 0.0},
    "demo --patients 4 --max-steps 1": {"patients": 4, "max_steps": 1},
}
REQUIRED = {"denoise": "--checkpoint c --input i --output o", "evaluate": "--out o", "simulate": "--input i --output o "
            "--modality ct", "manifest": "--out o", "sample": "--checkpoint c --out o.npy", "demo": ""}


@pytest.mark.parametrize("line", list(GOOD))
def test_good_values_pass_the_checks(line):
    command = line.split()[0]
    args = build_parser().parse_args([*line.split(), *REQUIRED[command].split()])
    assert {key: getattr(args, key) for key in GOOD[line]} == GOOD[line]
    if "auto" in line.split("--device")[-1]:
        assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")


HEAVY = ("torch", "monai", "lightning", "scipy", "nibabel", "SimpleITK", "matplotlib", "skimage", "pandas")


@pytest.mark.parametrize("command", ["", "simulate", "manifest", "train", "sample", "denoise", "evaluate", "export", "info",
                                     "demo"])
def test_help_imports_no_heavy_library(command):
    """``cdm4mi [COMMAND] --help`` answers without importing torch, MONAI or Lightning (each command imports them
    as it runs): the README's under-a-second help. Checked by the modules loaded, not by a timing."""
    script = ("import sys\nfrom cdm4mi.cli.main import main\n"
              f"status = main({[*command.split(), '--help']!r})\n"
              f"print(status, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser, by name."""
    [subparsers] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


@pytest.mark.parametrize("command", list(commands()))
def test_help_shows_every_default(command):
    """An option with a value when it is not given says which in --help (the value, or what decides it)."""
    parser = commands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and argparse.SUPPRESS not in (action.help, action.default) and action.default not in (None, False, []):
            assert "default" in formatter._expand_help(action), (command, action.option_strings)


def test_one_vocabulary_with_the_old_spellings_kept():
    """--output everywhere (--out too), --draws per scan (--samples too), --num-samples for generated samples."""
    for command, required in (("manifest", []), ("sample", ["--checkpoint", "c"]), ("evaluate", []), ("demo", [])):
        for spelling in ("--output", "--out"):
            assert build_parser().parse_args([command, *required, spelling, "x.npy"]).output == "x.npy"
    for command, required in (("denoise", ["--checkpoint", "c", "--input", "i", "--output", "o"]), ("evaluate", ["--output", "o"])):
        for spelling in ("--draws", "--samples"):
            assert build_parser().parse_args([command, *required, spelling, "3"]).samples == 3
    assert build_parser().parse_args(["sample", "--checkpoint", "c", "--output", "o.npy", "--num-samples", "7"]).num_samples == 7
    assert build_parser().parse_args(["evaluate", "--output", "o", "--num-samples", "7"]).num_samples == 7
    helps = {command: " ".join(parser.format_help().split()) for command, parser in commands().items()}
    assert all("--output" in helps[command] for command in ("simulate", "manifest", "sample", "denoise", "evaluate", "demo"))
    assert not any("--num-samples" in helps[command] for command in ("denoise",))
