"""Every numeric option of every command, and NaN/Inf in configs, refused up front (tests/bad_inputs_options.py).

A bad number must end the run with exit status 2 and one error line naming the option (or config key), before
any file is read (the cases name absent inputs, which a run that got further would name instead) and with nothing
written. argparse refuses most of them while parsing: its line, ``cdm4mi <command>: error: argument --steps:
...``, may follow its usage summary, which is not counted. Options whose range depends on a checkpoint are
refused as soon as it is loaded. The terminal summary (tests/conftest.py) reports the runs by class.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from bad_inputs import REPO, Context
from bad_inputs_options import option_cases
from cli_runs import TINY_UNET, make_ct_hospital, quick_training, train_tiny
from test_bad_inputs import arguments, listing, message_lines, shown_warnings

from cdm4mi.cli.main import build_parser, main
from cdm4mi.simulate.hospital import HospitalSpec

CASES = option_cases()
RUNS = [(case, command) for case in CASES for command in case.commands]
RESULTS: dict[str, tuple[str, str]] = {}
"""Run id -> (class, the error line it got); read by the terminal summary."""
SMALLEST_UNET = ("network.channel_mult=[1]", "network.attention_levels=[false]")


def summary_lines() -> list[str]:
    if not RESULTS:
        return []
    lines = [f"bad options: {len(RESULTS)} of {len(RUNS)} runs ({len(CASES)} cases) refused up front in one line "
             "naming the option or config key, nothing read or written"]
    for group in sorted({group for group, _ in RESULTS.values()}):
        examples = [line for run_group, line in RESULTS.values() if run_group == group]
        lines.append(f"  {group}: {len(examples)} runs; e.g. {examples[0]}")
    return lines


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    """A CT denoiser and a 2-D point model, each trained one step, and the CT manifest."""
    root = tmp_path_factory.mktemp("good")
    manifest, _ = make_ct_hospital(root, HospitalSpec(num_patients=4, shape=(2, 32, 32)))
    ct = train_tiny("ldct_2d_concat.yaml", manifest, root / "ct_run", 1, *SMALLEST_UNET)
    assert main(["train", "--config", str(REPO / "configs" / "toy2d.yaml"), f"output_dir={root / 'toy_run'}",
                 "data.num_samples=64", "training.batch_size=16", *quick_training(1)]) == 0
    return Context(ct, root / "toy_run" / "checkpoints" / "last.ckpt", manifest,
                   (*TINY_UNET, *SMALLEST_UNET, *quick_training(1)))


def is_usage(line: str) -> bool:
    """A line of argparse's usage summary, printed above its error line."""
    return line.startswith("usage: ") or line.startswith(" ")


@pytest.mark.parametrize(("case", "command"), RUNS, ids=[f"{command} :: {case.name}" for case, command in RUNS])
def test_bad_option_is_refused_up_front_in_one_line(case, command, context, tmp_path, capsys, caplog):
    built = case.make(tmp_path / "case", context)
    argv = arguments(command, case, built, context, tmp_path / "out")
    before = listing(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's refusal
            status = exit.code
    printed, err = capsys.readouterr()
    lines = [line for line in message_lines(err) if not is_usage(line)] + shown_warnings(caught) + [
        record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert status == 2 and len(lines) == 1, f"exit {status}, stderr and warnings:\n" + "\n".join(lines)[-3000:]
    assert lines[0].startswith(f"cdm4mi {command}: error: "), lines[0]
    assert any(name in lines[0] for name in built.names), lines[0]
    assert "absent" not in lines[0], "an input was looked at before the option was checked"
    assert "Traceback" not in err + printed
    assert listing(tmp_path) == before, "a refused run wrote files"
    RESULTS[f"{command} :: {case.name}"] = (case.group, lines[0].replace(str(tmp_path), "…"))


def test_every_command_with_numbers_is_covered():
    covered = {command for _, command in RUNS}
    assert covered == {"denoise", "sample", "evaluate", "simulate", "manifest", "demo", "train"}
    assert len(CASES) >= 40


GOOD = {  # command line -> parsed values: the checks refuse nothing a user may mean
    "denoise --steps 1 --eta 0 --t-start auto --samples 1 --batch-size 1 --seed 0 --device cpu":
        {"steps": 1, "eta": 0.0, "t_start": None, "samples": 1, "batch_size": 1, "seed": 0, "device": "cpu"},
    "denoise --t-start 0 --eta 1.5 --device auto": {"t_start": 0, "eta": 1.5},
    "evaluate --window -1000 -999.5 --folds 2 --t-start 7": {"window": [-1000.0, -999.5], "folds": 2, "t_start": 7},
    "simulate --dose 1 --flux 1e5 --own-noise 0 --electronic-noise 0 --sigma-percent 0":
        {"dose": 1.0, "flux": 1e5, "own_noise": 0.0, "electronic_noise": 0.0, "sigma_percent": 0.0},
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
