"""Deterministic, label-stratified splits of a data set's items into train / val / test."""

from __future__ import annotations

import numpy as np

from cdm4mi.data.registry import SPLITS


def split_cells(num_cells: int, labels: np.ndarray | None, val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, np.ndarray]:
    """Sorted cell indices of each split. Within each label (or among all cells without labels) the cells
    are shuffled by ``seed`` and ``round(n * test_fraction)`` go to test, ``round(n * val_fraction)`` to val."""
    rng = np.random.default_rng([seed, 1])
    groups = [np.arange(num_cells)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for group in groups:
        shuffled = rng.permutation(group)
        test = min(int(len(group) * test_fraction + 0.5), len(group))
        val = min(int(len(group) * val_fraction + 0.5), len(group) - test)
        parts["test"].append(shuffled[:test])
        parts["val"].append(shuffled[test:test + val])
        parts["train"].append(shuffled[test + val:])
    return {split: np.sort(np.concatenate(chosen)).astype(np.int64) for split, chosen in parts.items()}
