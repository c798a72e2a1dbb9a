"""Exported models: a ``DiffusionModule``'s weights in a safetensors file whose header carries, as JSON text, the
run config, the data state and the model card. Tensors and text only: reading one runs no unpickler at all, so a
shared file cannot carry code (a ``.ckpt`` is read with ``torch.load(weights_only=True)``, which refuses code but
still parses a pickle stream).

A MONAI bundle that ``cdm4mi export --format monai-bundle`` wrote holds the same file as
``models/model.safetensors``; ``load_module`` reads a bundle folder through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from cdm4mi.atomic import atomic_output

FORMAT = "cdm4mi-safetensors/1"
"""The header's ``format`` entry: which cdm4mi layout the file follows."""
BUNDLE_WEIGHTS = Path("models") / "model.safetensors"
HEADER_KEYS = ("config", "data_state", "card")


def is_safetensors(path: Path) -> bool:
    """Whether the file at ``path`` looks like safetensors: an 8-byte header length, then the JSON header's ``{``
    (a ``.ckpt`` is a zip archive, ``PK``...). Decides how ``load_module`` reads it, whatever its name."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    return len(start) == 9 and start[8:9] == b"{" and not start.startswith(b"PK")


def exported_weights(path: Path, option: str = "--checkpoint") -> Path:
    """The safetensors file of a bundle folder ``path`` (``models/model.safetensors``); a folder without one is a
    ``ValueError`` naming ``option``."""
    weights = path / BUNDLE_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{option}: {path} is a folder, not a checkpoint file (nor a bundle cdm4mi exported: "
                         f"it has no {BUNDLE_WEIGHTS})")
    return weights


def save_safetensors(module, path: str | Path, card: dict[str, Any], overwrite: bool = False,
                     config: dict[str, Any] | None = None, option: str | None = None) -> Path:
    """Write ``module``'s weights (a ``DiffusionModule``, as loaded: its EMA weights) to ``path`` atomically, with
    ``config`` (default: the module's own), its data state and ``card`` in the header. Returns ``path``."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share memory, and views of a larger storage
    tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in module.state_dict().items()}
    header = {"format": FORMAT, "config": config if config is not None else module.hparams["config"],
              "data_state": module.data_state, "card": card}
    metadata = {key: value if isinstance(value, str) else json.dumps(value, allow_nan=False)
                for key, value in header.items()}
    with atomic_output(path, overwrite=overwrite, option=option) as temporary:
        save_file(tensors, temporary, metadata=metadata)
        umask = os.umask(0)  # safetensors creates files 0600; a file to share gets the usual mode
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
    return Path(path)


def read_header(path: str | Path, option: str = "--checkpoint") -> dict[str, Any]:
    """The parsed header entries (``config``, ``data_state``, ``card``) of a cdm4mi safetensors file; a file that
    is not one is a ``ValueError`` naming ``option`` and the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, ... for damaged files
        raise ValueError(f"{option}: {path} is not a readable safetensors file ({_first_line(error)})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{option}: {path} is a safetensors file that cdm4mi did not export (its header has no "
                         f"format '{FORMAT}'); cdm4mi needs the config stored with the weights")
    header = {}
    for key in HEADER_KEYS:
        try:
            header[key] = json.loads(metadata.get(key, ""))
        except ValueError:
            raise ValueError(f"{option}: {path}: the header entry '{key}' is missing or not JSON; the file is "
                             "damaged") from None
    if not isinstance(header["config"], dict) or not isinstance(header["card"], dict):
        raise ValueError(f"{option}: {path}: the header holds no cdm4mi config and card; the file is damaged")
    return header


def read_safetensors(path: str | Path, option: str = "--checkpoint") -> tuple[dict, dict | None, dict, dict]:
    """``(config, data_state, state_dict, card)`` of a cdm4mi safetensors file, tensors on the CPU."""
    from safetensors.torch import load_file

    header = read_header(path, option)
    try:
        state_dict: dict[str, torch.Tensor] = load_file(str(path), device="cpu")
    except Exception as error:
        raise ValueError(f"{option}: {path}: its tensors cannot be read ({_first_line(error)}); the file is cut "
                         "short or damaged") from None
    return header["config"], header["data_state"], state_dict, header["card"]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
