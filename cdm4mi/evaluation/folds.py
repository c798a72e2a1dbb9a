"""Patient-level K-fold cross-validation for small cohorts: each patient is tested exactly once."""

from __future__ import annotations

import dataclasses
import hashlib

from cdm4mi.data.manifest import Manifest


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
