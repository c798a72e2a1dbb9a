"""Load a trained model for sampling or inference, without unpickling anything.

Checkpoints hold tensors and plain containers only (the config is stored as a JSON-like dict),
so ``torch.load(weights_only=True)`` reads them and a checkpoint carrying code is refused. An exported
safetensors file, or a MONAI bundle folder holding one, is read as well (``cdm4mi.training.exported``).
"""

from __future__ import annotations

from pathlib import Path

import torch

import cdm4mi
from cdm4mi.atomic import atomic_output
from cdm4mi.io.budget import short_repr
from cdm4mi.training.exported import exported_weights, is_safetensors, read_safetensors
from cdm4mi.training.module import DiffusionModule
from cdm4mi.training.safety import load_error


def load_module(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModule:
    """The model of a checkpoint written by ``cdm4mi train``, with its EMA weights, in eval mode, on ``device``
    (read on the CPU, then moved: every parameter and buffer is on ``device``). ``path`` may also be a
    safetensors file ``cdm4mi export`` wrote, or the MONAI bundle folder it wrote.

    ``module.card`` is what the checkpoint records about the model (``DiffusionModule.model_card``: package
    version, task, modality, normalization, spatial dims, channels); derived from the config for older files.
    """
    path = Path(path)
    if path.is_dir():
        path = exported_weights(path)
    if not path.is_file():
        raise ValueError(f"--checkpoint: file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"--checkpoint: {path} is empty (0 bytes): a copy or save that did not finish")
    if is_safetensors(path):
        config, data_state, state_dict, card = read_safetensors(path)
    else:
        config, data_state, state_dict, card = _read_checkpoint(path)
    broken = [name for name, value in state_dict.items()
              if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise ValueError(f"--checkpoint: {path} has NaN or Inf weights ({len(broken)} tensors, e.g. {broken[0]}): "
                         "its training diverged; use an earlier checkpoint")
    version = card.get("version", "before 0.1")  # cut: a damaged card may hold anything
    version = version[:40] if isinstance(version, str) else short_repr(version, 40)
    written_by = f"written by cdm4mi {version}, this is {cdm4mi.__version__}"
    try:
        module = DiffusionModule(config, data_state)
        module.load_state_dict(state_dict)
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise ValueError(f"--checkpoint: {path} does not fit this cdm4mi ({written_by}): {load_error(error)}") from None
    module.card = {**module.model_card(), **card}
    return module.to(device).eval()


def _read_checkpoint(path: Path) -> tuple[dict, dict | None, dict, dict]:
    """``(config, data_state, state_dict, card)`` of a checkpoint ``cdm4mi train`` wrote, read without code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise ValueError(f"--checkpoint: {path} is not a loadable cdm4mi checkpoint: {load_error(error)}") from None
    hyper_parameters = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    config = hyper_parameters.get("config") if isinstance(hyper_parameters, dict) else None
    if not isinstance(config, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"--checkpoint: {path} holds no cdm4mi config and weights")
    card = checkpoint.get("cdm4mi") if isinstance(checkpoint.get("cdm4mi"), dict) else {}
    return config, hyper_parameters.get("data_state"), checkpoint["state_dict"], card


def store_card_entry(path: str | Path, key: str, value: dict) -> None:
    """Add ``key: value`` to the card of the checkpoint at ``path`` (its ``cdm4mi`` entry), rewritten atomically.
    The checkpoint must be one cdm4mi wrote (``load_module`` reads it); the weights are untouched."""
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    card = checkpoint.get("cdm4mi")
    if not isinstance(card, dict):
        raise ValueError(f"--checkpoint: {path} has no cdm4mi card; it was not written by cdm4mi train")
    card[key] = value
    with atomic_output(path, overwrite=True) as temporary:
        torch.save(checkpoint, temporary)
