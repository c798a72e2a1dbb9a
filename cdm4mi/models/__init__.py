"""Backbones: every network keeps the ``Backbone`` protocol (``forward(x, t, cond=None)``, ``size_multiple``,
``cond_drop_prob``) and is built by name."""

from cdm4mi.models.backbone import Backbone
from cdm4mi.models.registry import BACKBONES, build_backbone

__all__ = ["BACKBONES", "Backbone", "build_backbone"]
