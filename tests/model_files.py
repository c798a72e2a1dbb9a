"""Model files the tests share: checkpoints of shipped configs' networks with random weights, written in an
instant (no training), stored as ``cdm4mi train`` stores one."""

from __future__ import annotations

from pathlib import Path

import torch

from cdm4mi.config import load_config
from cdm4mi.training.module import DiffusionModule

REPO = Path(__file__).resolve().parents[1]
CT_STATE = {"modality": "CT", "normalization": {"name": "hu_window"}}
"""The data state of a CT denoiser trained on paired scans in the default HU window."""


def random_checkpoint(path: Path, config: str, data_state: dict | None, *overrides: str) -> Path:
    """A checkpoint of a shipped config's model with every weight random (zero-initialised layers included, so
    the network's output depends on its input), stored as ``cdm4mi train`` stores one."""
    module = DiffusionModule(load_config(REPO / "configs" / config, list(overrides)).model_dump(mode="json"), data_state)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "cdm4mi": module.model_card()}, path)
    return path
