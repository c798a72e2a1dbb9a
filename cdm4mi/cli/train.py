"""``cdm4mi train --config FILE [key=value ...]``: train any configured backbone on any data set."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from cdm4mi.cli.options import device
from cdm4mi.presets import shipped_configs
from cdm4mi.termination import Terminated, is_quiet


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train",
        parents=[common],
        help="train a diffusion model from a YAML config",
        description="Train a diffusion model. Options come from --config and key=value overrides\n"
        "(e.g. training.max_steps=200 network.base_channels=32 output_dir=runs/try).",
    )
    parser.add_argument("--config", required=True,
                        help=f"a YAML file, or the name of a config shipped with cdm4mi: {', '.join(shipped_configs())}")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto",
                        help="continue output_dir's run from its latest checkpoint (last.ckpt, or the hpc_ckpt_<n>.ckpt "
                             "Lightning saves on SLURM's requeue signal); '--resume auto': continue if there is one, "
                             "else start (a job that may be requeued)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output_dir that holds a run (its checkpoints, logs and previews are deleted)")
    parser.add_argument("--device", type=device, default=None,
                        help="cpu, cuda (training.devices GPUs), cuda:N (GPU N alone), mps or auto "
                             "(default: the config's training.accelerator, auto: the GPUs if there are any)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(run=run)


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run from its latest checkpoint."""
    return shlex.join(["cdm4mi", "train", "--config", args.config, "--resume", *args.overrides])


def resume_mode(args: argparse.Namespace) -> bool | str:
    """``--resume``: True; ``--resume auto``: 'auto'; neither: False. argparse gives ``--resume`` the word after
    it, which may be the first override (``--resume training.max_steps=900``): it goes back to the overrides."""
    if args.resume in (True, False, "auto"):
        return args.resume
    if "=" not in args.resume:
        raise ValueError(f"--resume: expected nothing (continue the run) or 'auto' (continue if there is a "
                         f"checkpoint, else start), got {args.resume!r}")
    args.overrides.insert(0, args.resume)
    return True


def run(args: argparse.Namespace) -> int:
    from cdm4mi.config import load_config  # torch, Lightning: imported by the command, not for --help
    from cdm4mi.evaluation.calibration import calibrate_checkpoint, describe_calibration
    from cdm4mi.training.run import CHECKPOINT_DIR, LAST_CHECKPOINT, device_overrides, fit

    resume = resume_mode(args)
    device = [] if args.device is None else device_overrides(args.device)
    config = load_config(args.config, [*args.overrides, *device])
    try:
        _, trainer = fit(config, resume=resume, overwrite=args.overwrite)
    except (Terminated, KeyboardInterrupt) as stop:  # a signal: say how to go on (the CLI prints one line)
        if is_quiet(stop):  # another DDP rank, which rank 0 speaks for
            raise
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
