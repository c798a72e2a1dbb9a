"""argparse ``type=`` functions and actions for cdm4mi's options: each number is checked while the command line is
parsed, so a bad value is refused by argparse in one line naming the option (``argument --steps: ...``, exit
status 2) before any file is read or any model loaded. Ranges that depend on a checkpoint (``--t-start`` beyond
its timesteps) are checked once it is loaded: ``cdm4mi.inference.checks.check_sampling_options``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

import torch

DEVICE_SPELLING = re.compile(r"cpu|cuda(:\d+)?|mps|auto")


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


def device(text: str) -> str:
    """cpu, cuda, cuda:N, mps or auto (CUDA if there is one, else cpu); a device this machine lacks is refused,
    never replaced by another."""
    if not DEVICE_SPELLING.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto, got {text!r}")
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device on this machine")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if text == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("mps: no Apple GPU (MPS) on this machine")
    return text


class IncreasingPair(argparse.Action):
    """Two finite numbers LOW HIGH with LOW < HIGH (``nargs=2``), e.g. an HU window."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        low, high = values  # each already a finite float: add it with type=finite_float
        if not low < high:
            raise argparse.ArgumentError(self, f"LOW must be below HIGH, got {low:g} {high:g}")
        setattr(namespace, self.dest, [low, high])
