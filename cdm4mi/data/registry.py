"""The one registry of data sets. Each entry is built as ``constructor(split=..., **options)``
and returns a ``torch.utils.data.Dataset`` whose items are dicts: ``{"x0": tensor}`` plus
``"cond"`` for conditional data."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from cdm4mi.cohort.splits import SPLITS
from cdm4mi.registry import Registry

DATASETS = Registry("data")


def build_dataset(name: str, split: str, **options: Any) -> Dataset:
    if split not in SPLITS:
        raise ValueError(f"split: unknown '{split}'; choose one of {list(SPLITS)}")
    _register_builtins()
    return DATASETS.build(name, split=split, **options)


def validate_dataset_options(name: str, **options: Any) -> None:
    """Check a ``data`` config block without loading anything (errors name ``data.<key>``)."""
    _register_builtins()
    DATASETS.validate(name, split="train", **options)


def _register_builtins() -> None:
    from cdm4mi.data import expression, images, paired, toy  # noqa: F401  (registers on import)
