"""Backbones: every network is an ``nn.Module`` with ``forward(x, t, cond=None)``, built by name."""

from cdm4mi.models.registry import BACKBONES, build_backbone

__all__ = ["BACKBONES", "build_backbone"]
