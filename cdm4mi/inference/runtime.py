"""Where and how a trained model runs at inference: its device, the autocast precision of its network, the memory
format of its 2D convolutions and ``torch.compile``. One place, so ``denoise``, ``evaluate`` and ``sample`` run a
model the same way and a device the machine lacks is refused in one line, never replaced by another.

* device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (the first CUDA GPU if there is one, else the CPU).
* precision: ``fp32``; ``bf16`` or ``fp16`` run the network's matrix products and convolutions under
  ``torch.autocast`` while the sampler's arithmetic stays in float32 (the denoiser casts the network's output
  back: ``cdm4mi.diffusion.denoiser``).
* channels_last: NHWC convolutions for 2D networks; ``None`` turns it on for CUDA (tensor cores), off on the CPU.
* compile: ``torch.compile`` the backbone (the first batch pays the compilation).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.module import DiffusionModule

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_SPELLING = re.compile(r"cpu|cuda(:\d+)?|mps|auto")


def resolve_device(text: str, option: str = "--device") -> torch.device:
    """The device ``text`` names on this machine; ``auto``: CUDA if present, else the CPU. A device this machine
    lacks is a ``ValueError`` naming ``option``."""
    if not DEVICE_SPELLING.fullmatch(text):
        raise ValueError(f"{option}: expected cpu, cuda, cuda:N, mps or auto, got {text!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{option}: {text}: no CUDA device on this machine (use --device cpu or auto)")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{option}: {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if text == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option}: mps: no Apple GPU (MPS) on this machine")
    return torch.device(text)


def check_precision(precision: str, device: torch.device, option: str = "--precision") -> None:
    """Refuse a precision ``device`` cannot run (bf16 on a CUDA GPU older than Ampere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{option}: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{option}: bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or fp32")


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (nothing for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def load_for_inference(checkpoint: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
                       channels_last: bool | None = None, compile: bool = False) -> DiffusionModule:
    """The model of ``checkpoint`` (``load_module``) placed on ``device`` as ``place`` does, after checking that
    ``device`` can run ``precision``."""
    device = torch.device(device)
    check_precision(precision, device)
    return place(load_module(checkpoint, device=device), device, channels_last, compile)


def place(module: nn.Module, device: torch.device | str, channels_last: bool | None = None,
          compile: bool = False) -> nn.Module:
    """``module`` (a ``DiffusionModule``) moved to ``device``, its 2D backbone in channels_last memory format
    where asked (``None``: on CUDA), its backbone compiled when ``compile``. Returns the module."""
    device = torch.device(device)
    module.to(device)
    planar = not any(isinstance(layer, nn.Conv3d) for layer in module.backbone.modules())  # NHWC needs rank 4
    if (device.type == "cuda" if channels_last is None else channels_last) and planar:
        module.backbone.to(memory_format=torch.channels_last)
    if compile:
        module.backbone = torch.compile(module.backbone)
    return module
