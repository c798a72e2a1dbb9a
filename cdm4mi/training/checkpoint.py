"""Load a trained model for sampling or inference, without unpickling anything.

Checkpoints hold tensors and plain containers only (the config is stored as a JSON-like dict),
so ``torch.load(weights_only=True)`` reads them and a checkpoint carrying code is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cdm4mi.training.module import DiffusionModule


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """The model of a checkpoint written by ``cdm4mi train``, with its EMA weights, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--checkpoint: file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--checkpoint: {path} is not a loadable cdm4mi checkpoint ({first_line})") from None
    hyper_parameters = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    config = hyper_parameters.get("config")
    if config is None or "state_dict" not in checkpoint:
        raise ValueError(f"--checkpoint: {path} holds no cdm4mi config and weights")
    module = DiffusionModule(config, hyper_parameters.get("data_state"))
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
