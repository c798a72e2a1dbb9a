"""The one registry of backbones. Importing this module registers every built-in backbone."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from cdm4mi.io.budget import check_network, short_repr
from cdm4mi.models.backbone import Backbone
from cdm4mi.registry import Registry

BACKBONES = Registry("network")


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` (``unet``, ``simple_score``, ``residual_mlp``, ...); it must keep
    the ``Backbone`` protocol (``size_multiple``, ``cond_drop_prob``, ``(x, t, cond) -> prediction``)."""
    _register_builtins()
    options = BACKBONES.validate(name, **kwargs)
    check_backbone_size(name, options)
    backbone = BACKBONES.get(name)(**options)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"network.name: backbone '{name}' does not keep cdm4mi.models.backbone.Backbone: it must set "
                        "size_multiple and cond_drop_prob")
    return backbone


def check_backbone_size(name: str, options: dict[str, Any]) -> None:
    """Refuse, before anything is allocated, a backbone whose weights pass the byte budget or whose modules
    number more than any network needs (``cdm4mi.io.budget.check_network``): e.g. ``base_channels: 1000000``,
    from a config or from a checkpoint's stored config."""
    _register_builtins()
    options = BACKBONES.validate(name, **options)
    sizes = ", ".join(f"{key}={short_repr(value, 40)}" for key, value in options.items()
                      if isinstance(value, (int, list)) and not isinstance(value, bool))
    sizes = sizes if len(sizes) <= 300 else sizes[:297] + "..."
    check_network(lambda: BACKBONES.get(name)(**options), f"network ({name}: {sizes})")


BUILTIN_MODULES = ("bio", "dit", "mlp", "monai_unet", "toy", "unet")


def _register_builtins() -> None:
    # Imported for their @BACKBONES.register side effect; kept lazy so backbones never import each other.
    for module in BUILTIN_MODULES:
        importlib.import_module(f"cdm4mi.models.{module}")
