"""``cdm4mi train --config FILE [key=value ...]``: train any configured backbone on any data set."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from cdm4mi.config import load_config
from cdm4mi.evaluation.calibration import calibrate_checkpoint, describe_calibration
from cdm4mi.termination import Terminated
from cdm4mi.training.run import CHECKPOINT_DIR, LAST_CHECKPOINT, fit


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train",
        parents=[common],
        help="train a diffusion model from a YAML config",
        description="Train a diffusion model. Options come from --config and key=value overrides "
        "(e.g. training.max_steps=200 network.base_channels=32 output_dir=runs/try).",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/toy2d.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last.ckpt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output_dir that holds a run (its checkpoints, logs and previews are deleted)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(run=run)


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run from its ``last.ckpt``."""
    return shlex.join(["cdm4mi", "train", "--config", args.config, "--resume", *args.overrides])


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    try:
        _, trainer = fit(config, resume=args.resume, overwrite=args.overwrite)
    except (Terminated, KeyboardInterrupt) as stop:  # a signal: say how to go on (the CLI prints one line)
        last = Path(config.output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
        hint = f"; resume with: {resume_command(args)}" if last.is_file() else ""
        raise type(stop)(f"{str(stop) or 'stopped before training began'}{hint}") from None
    if trainer.is_global_zero:
        output_dir = Path(config.output_dir)
        print(f"trained {trainer.global_step} steps")
        print(f"checkpoint: {output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT}")
        print(f"previews:   {output_dir / 'previews'}")
        print(f"logs:       {Path(trainer.loggers[0].log_dir) / 'metrics.csv'} (TensorBoard: {output_dir / 'tensorboard'})")
        coverage = config.sampling.calibrate_coverage
        if coverage is not None and not trainer.interrupted:
            calibration = calibrate_checkpoint(output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, coverage,
                                               config.sampling.calibrate_samples, seed=config.training.seed)
            if calibration is not None:
                print(describe_calibration(calibration))
    return 0
