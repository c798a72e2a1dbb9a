"""argparse ``type=`` functions and actions for cdm4mi's options: each number is checked while the command line is
parsed, so a bad value is refused by argparse in one line naming the option (``argument --steps: ...``, exit
status 2) before any file is read or any model loaded. Ranges that depend on a checkpoint (``--t-start`` beyond
its timesteps) are checked once it is loaded: ``cdm4mi.inference.checks.check_sampling_options``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's ``--help`` (``OneLineParser``'s formatter): the description as written, and each option's
    default after its help, ``(default: 800)``, unless the help already says it or there is none to show (no value,
    a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (text == argparse.SUPPRESS or not action.option_strings or "default" in text
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def whole_number(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum`` ('5'; not '5.0', '-1' for minimum 0, 'nan')."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[low, high]`` (``(low, high]`` when ``low_open``); 'nan' and 'inf' are refused, as
    they would pass every comparison or none and surface later as NaN images or endless loops."""
    if high < math.inf:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low > -math.inf:
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


finite_float = number()
non_negative_float = number(0.0)
positive_float = number(0.0, low_open=True)
fraction = number(0.0, 1.0, low_open=True)


def timestep_or_auto(text: str) -> int | None:
    """'auto' (None: chosen from the input's noise) or a timestep, a whole number >= 0."""
    return None if text == "auto" else non_negative_int(text)


def cutoff_or_match(text: str) -> float | str:
    """'match' (fit the simulator's kernel to the scan's own noise texture) or a Hann cutoff in Nyquists > 0."""
    if text == "match":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'match' or a finite number > 0, got {text!r}") from None


def device(text: str) -> str:
    """cpu, cuda, cuda:N, mps or auto (CUDA if there is one, else cpu), as the device it resolves to on this
    machine; a device this machine lacks is refused, never replaced by another (``inference.runtime``)."""
    from cdm4mi.inference.runtime import resolve_device  # torch: imported when a command line is parsed, not for --help

    try:
        return str(resolve_device(text, option="device"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("device: ")) from None


def add_adapt_option(parser: argparse.ArgumentParser) -> None:
    """``--adapt-steps``: self-supervised fine-tuning of a copy of the model on each scan before it is denoised."""
    parser.add_argument("--adapt-steps", type=non_negative_int, metavar="N",
                        help="first fine-tune a copy of the model on each scan for N self-supervised steps (CT, 2D; "
                             "about 0.2 s a step on 2 CPU cores; a known --metadata dose_fraction limits it to the "
                             "noise the lower dose added); 0: none (default: the checkpoint's sampling.adapt_steps)")


def add_nlm_blend_option(parser: argparse.ArgumentParser) -> None:
    """``--nlm-blend``: the share of non-local means of the input in the output (``sampling.nlm_blend``)."""
    parser.add_argument("--nlm-blend", type=number(0.0, 1.0), metavar="W",
                        help="output = (1 - W) x the mean of the draws + W x non-local means of the input, tuned to "
                             "its estimated noise; 0: the model alone (default: the checkpoint's sampling.nlm_blend)")


def add_runtime_options(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--device`` and, for commands that run a trained network, ``--precision``, ``--channels-last``, ``--compile``
    (``cdm4mi.inference.runtime``)."""
    parser.add_argument("--device", type=device, default="auto",
                        help="cpu, cuda, cuda:N, mps or auto: the first CUDA GPU if there is one, else cpu "
                             "(default: %(default)s)")
    if not precision:
        return
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision of the network; the sampler stays in fp32 (default: %(default)s)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory format for 2D networks (default: on for CUDA, off for cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (the first batch compiles)")


class IncreasingPair(argparse.Action):
    """Two finite numbers LOW HIGH with LOW < HIGH (``nargs=2``), e.g. an HU window."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        low, high = values  # each already a finite float: add it with type=finite_float
        if not low < high:
            raise argparse.ArgumentError(self, f"LOW must be below HIGH, got {low:g} {high:g}")
        setattr(namespace, self.dest, [low, high])


def devices_or_auto(text: str) -> int | str:
    """``--devices``: a number of processes per node, or 'auto' (every GPU; one process on the CPU)."""
    return "auto" if text == "auto" else positive_int(text)


def add_process_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--devices``, ``--num-nodes``, ``--strategy``: the processes Lightning spreads patients over
    (``cdm4mi.inference.predict``); all None when not given."""
    parser.add_argument("--devices", type=devices_or_auto, metavar="N|auto",
                        help="processes per node, one per GPU (auto: every GPU; one process on the CPU)")
    parser.add_argument("--num-nodes", type=positive_int, help="nodes (srun or torchrun start their processes)")
    parser.add_argument("--strategy", choices=["auto", "ddp"],
                        help="Lightning's strategy (auto: ddp for several processes)")


def process_options(args: argparse.Namespace) -> dict | None:
    """``predict_patients``'s options from ``add_process_options``, or None when none was given."""
    if args.devices is None and args.num_nodes is None and args.strategy is None:
        return None
    return {"device": args.device, "devices": args.devices, "num_nodes": args.num_nodes or 1,
            "strategy": args.strategy or "auto"}
