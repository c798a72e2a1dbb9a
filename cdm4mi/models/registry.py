"""The one registry of backbones. Importing this module registers every built-in backbone."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from cdm4mi.models.backbone import Backbone
from cdm4mi.registry import Registry

BACKBONES = Registry("network")


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` (``unet``, ``simple_score``, ``residual_mlp``, ...); it must keep
    the ``Backbone`` protocol (``size_multiple``, ``cond_drop_prob``, ``(x, t, cond) -> prediction``)."""
    _register_builtins()
    backbone = BACKBONES.build(name, **kwargs)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"network.name: backbone '{name}' does not keep cdm4mi.models.backbone.Backbone: it must set "
                        "size_multiple and cond_drop_prob")
    return backbone


BUILTIN_MODULES = ("bio", "dit", "mlp", "monai_unet", "toy", "unet")


def _register_builtins() -> None:
    # Imported for their @BACKBONES.register side effect; kept lazy so backbones never import each other.
    for module in BUILTIN_MODULES:
        importlib.import_module(f"cdm4mi.models.{module}")
