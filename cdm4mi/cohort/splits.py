"""Splits and folds in one place: patients into train / val / test (seeded, by patient, never by slice), items of
a data set into label-stratified splits, and patient-level K folds for cross-validating small cohorts."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (the manifest module checks entries against SPLITS)
    from cdm4mi.cohort.manifest import Manifest

SPLITS = ("train", "val", "test")


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


DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def check_fractions(fractions: Sequence[float], option: str = "fractions") -> tuple[float, float, float]:
    """(train, val, test) fractions: three numbers >= 0 summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"{option}: need three fractions >= 0 for train, val, test summing to 1, "
                         f"got {list(fractions)}")
    return values  # type: ignore[return-value]


def split_patients(patient_ids: Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                   fixed: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Assign each patient (never a slice) to 'train', 'val' or 'test'.

    Counts are ``round(fraction * n)`` of all ``n`` patients, fixed ones included; with ``n >= 3`` a split
    with a fraction above 0 gets at least one patient (val and test first, train keeps at least one).
    ``fixed`` pins patients (``{"test": [...]}``); the others are ordered by SHA-256 of ``seed`` and their id
    and dealt to test, val, then train. The result depends on the ids and the seed only, not on their order,
    and adding a patient moves few others.

    Returns ``{patient_id: split}``.
    """
    train_f, val_f, test_f = check_fractions(fractions)
    ids = list(patient_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("patient_ids: the same patient is listed twice")
    assigned: dict[str, str] = {}
    for split, members in (fixed or {}).items():
        if split not in SPLITS:
            raise ValueError(f"fixed: unknown split '{split}'; choose from {list(SPLITS)}")
        for patient in members:
            if patient not in ids:
                raise ValueError(f"fixed: a patient pinned to {split} is not among the patients to split")
            if assigned.get(patient, split) != split:
                raise ValueError(f"fixed: patient pinned to both {assigned[patient]} and {split}")
            assigned[patient] = split
    wanted = _split_counts(len(ids), {"train": train_f, "val": val_f, "test": test_f})
    free = sorted((p for p in ids if p not in assigned),
                  key=lambda p: hashlib.sha256(f"{seed}\0{p}".encode()).hexdigest())
    keep_for_training = 1 if train_f > 0 and "train" not in assigned.values() else 0
    for split in ("test", "val"):
        pinned = sum(1 for s in assigned.values() if s == split)
        for _ in range(max(0, wanted[split] - pinned)):
            if len(free) > keep_for_training:
                assigned[free.pop(0)] = split
    assigned.update((patient, "train") for patient in free)
    return {patient: assigned[patient] for patient in ids}


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    counts = {split: math.floor(f * n + 0.5) for split, f in fractions.items()}
    if n >= 3:
        for split in ("val", "test"):
            if fractions[split] > 0:
                counts[split] = max(1, counts[split])
    return counts


def fold_manifests(manifest: Manifest, folds: int, seed: int = 0) -> list[Manifest]:
    """K manifests over all patients of ``manifest``: fold k tests the k-th slice of a seeded patient
    order, validates on one other patient, and trains on the rest."""
    patients = sorted(manifest.patients, key=lambda e: hashlib.sha256(f"{seed}\0{e.patient_id}".encode()).hexdigest())
    if not 2 <= folds <= len(patients) - 2:
        raise ValueError(f"--folds: need 2 <= K <= {len(patients) - 2} (patients - 2) for {len(patients)} patients, got {folds}")
    result = []
    for k in range(folds):
        test = {e.patient_id for i, e in enumerate(patients) if i % folds == k}
        rest = [e.patient_id for e in patients if e.patient_id not in test]
        val = {rest[k % len(rest)]}
        split_of = {pid: "test" if pid in test else "val" if pid in val else "train" for pid in (e.patient_id for e in patients)}
        entries = tuple(dataclasses.replace(e, split=split_of[e.patient_id]) for e in manifest.patients)
        result.append(dataclasses.replace(manifest, patients=entries, path=None))
    return result


