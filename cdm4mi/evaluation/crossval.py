"""Patient-level K-fold cross-validation of a training config: each fold's manifest and run under ``out/fold<k>``,
its test patients scored by the held-out evaluation, the rows pooled (``cdm4mi evaluate --folds``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cdm4mi.cohort.manifest import Manifest, save_manifest
from cdm4mi.config import load_config
from cdm4mi.evaluation.heldout import HeldOutResult, evaluate_heldout
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.run import CHECKPOINT_DIR, LAST_CHECKPOINT, fit


def fold_overrides(overrides: Sequence[str], fold_dir: Path) -> list[str]:
    """The config overrides of the fold whose files live in ``fold_dir``: its manifest and its run."""
    return [*overrides, f"data.manifest={fold_dir / 'manifest.json'}", f"output_dir={fold_dir / 'run'}"]


def cross_validate(config: str | Path, overrides: Sequence[str], folds: list[Manifest], out: Path, stage: Path,
                   evaluate: dict, overwrite: bool = False, device: str = "cpu") -> HeldOutResult:
    """Train ``config`` (with ``overrides``) on each fold (its manifest and run under ``out/fold<k>``) and score
    its test patients on ``device`` with ``evaluate_heldout(**evaluate)``; the figures go to ``stage``."""
    pooled = HeldOutResult()
    for k, fold in enumerate(folds):
        fold_dir = out / f"fold{k + 1}"
        save_manifest(fold, fold_dir / "manifest.json", overwrite=overwrite)
        fold_config = load_config(config, fold_overrides(overrides, fold_dir))
        fit(fold_config, overwrite=overwrite and (fold_dir / "run" / CHECKPOINT_DIR / LAST_CHECKPOINT).exists())
        module = load_module(fold_dir / "run" / CHECKPOINT_DIR / LAST_CHECKPOINT, device=device)
        fold_result = evaluate_heldout(module, fold, "test", figures_dir=stage / "figures", **evaluate)
        pooled.rows += [{**row, "fold": k + 1} for row in fold_result.rows]
        pooled.figures += fold_result.figures
        pooled.scores += fold_result.scores  # their physicist's measures and lesion ROIs
        pooled.warm_starts.update(fold_result.warm_starts)
    return pooled
