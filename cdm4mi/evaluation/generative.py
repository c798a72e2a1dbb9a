"""Evaluate an unconditional or class-conditional generative model against held-out real data.

Draws as many samples as there are real items in the split (class-conditional models: with exactly the
real items' labels), then scores them by data kind:

* vectors (cells, points): MMD, Wasserstein-1, per-gene moment correlations, kNN real-vs-generated AUC,
  cell-type accuracy (``cdm4mi.evaluation.bio_metrics``), next to two references scored the same way:
  a Gaussian with the training set's mean and covariance (the baseline to beat) and the real training
  items themselves (what a perfect generator would score). Expression models are compared in
  log-normalized expression (the checkpoint's preprocessing undone, negative values clipped to 0).
* images: FID and KID from the pytorch-fid Inception weights file the user supplies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cdm4mi.data.registry import build_dataset
from cdm4mi.evaluation.bio_figures import save_embedding_overlay, save_gene_moment_plot
from cdm4mi.evaluation.bio_metrics import bio_generation_report, gaussian_baseline, write_bio_report
from cdm4mi.evaluation.generation_metrics import image_generation_report
from cdm4mi.evaluation.image_figures import save_image_grid
from cdm4mi.evaluation.inception import load_inception
from cdm4mi.inference.generate import sample_batches
from cdm4mi.training.module import DiffusionModule


@dataclass
class GenerationResult:
    """What was scored (``reports``: method -> metrics) and the files written."""

    reports: dict[str, dict] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def stack_split(module: DiffusionModule, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The split's items ``x0`` [N, ...] and labels [N] (None for an unconditional data set)."""
    data = dict(module.config.data)
    dataset = build_dataset(data.pop("name"), split, **data)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError(f"--split: the {split} split of data '{module.config.data['name']}' is empty")
    items = [dataset[i] for i in range(count)]
    cond = items[0].get("cond")
    if cond is not None and not (isinstance(cond, dict) and set(cond) == {"label"}):
        raise ValueError("--checkpoint: a model conditioned on images or metadata is evaluated with --manifest")
    x0 = torch.stack([item["x0"] for item in items])
    labels = None if cond is None else torch.stack([torch.as_tensor(item["cond"]["label"]) for item in items])
    return x0, labels


def evaluate_generation(module: DiffusionModule, out: Path, split: str = "test", num_samples: int | None = None,
                        inception_weights: str | None = None, batch_size: int = 500, seed: int = 0,
                        overwrite: bool = False, precision: str = "fp32") -> GenerationResult:
    """Sample the model (on its device, ``precision`` autocast) and score it against the ``split``'s real items
    there; write summary.json, CSV, PNGs to ``out``."""
    device = module.device
    real, labels = stack_split(module, split, num_samples)
    if real.ndim >= 4:  # images: check the Inception file before spending time on sampling
        inception = load_inception(inception_weights, device=device)
        generated = sample_batches(module, tuple(real.shape[1:]), len(real), labels, batch_size, seed, precision,
                                   "generating")
        return score_images(generated, real, inception, Path(inception_weights).name, out, device, seed, overwrite)
    generated = sample_batches(module, tuple(real.shape[1:]), len(real), labels, batch_size, seed, precision,
                               "generating")
    train, train_labels = stack_split(module, "train")
    return score_vectors(generated, real, labels, train, train_labels, module.data_state, out, seed, overwrite)


def score_vectors(generated: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None, train: torch.Tensor,
                  train_labels: torch.Tensor | None, data_state: dict | None, out: Path, seed: int,
                  overwrite: bool) -> GenerationResult:
    """Model, matched Gaussian and real training items, each against the held-out items under one PCA
    fitted on the held-out items (on a few hundred cells even real cells sit a little apart from them
    in the last PCs: the real_train row is the floor to read the others against)."""
    to_units = expression_units(data_state)
    real_units = to_units(real)
    baseline = torch.from_numpy(gaussian_baseline(train.double().numpy(), len(real), seed=seed))
    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:len(real)]
    compared = {  # method -> (items, their intended labels); the Gaussian has no classes
        "model": (generated, labels),
        "gaussian_baseline": (baseline, None),
        "real_train": (train[subset], None if train_labels is None else train_labels[subset]),
    }
    result = GenerationResult()
    for method, (cells, cell_labels) in compared.items():
        paired = labels is not None and cell_labels is not None
        result.reports[method] = bio_generation_report(
            real_units, to_units(cells), real_labels=labels.numpy() if paired else None,
            generated_labels=cell_labels.numpy() if paired else None, seed=seed)
    result.files.append(write_bio_report(result.reports, out, overwrite=overwrite) / "metrics.csv")
    generated_units = to_units(generated)
    names = (data_state or {}).get("class_names")
    label_array = None if labels is None else np.array([names[i] for i in labels] if names else labels.numpy())
    result.files.append(save_embedding_overlay(real_units, generated_units, out / "embedding_pca.png",
                                               real_labels=label_array, generated_labels=label_array,
                                               title="held-out real vs generated (PCA of real)", overwrite=overwrite))
    if real.shape[1] > 2:
        result.files.append(save_gene_moment_plot(real_units, generated_units, out / "gene_moments.png",
                                                  overwrite=overwrite))
    return result


def expression_units(data_state: dict | None):
    """Samples in model units -> the units the metrics compare (log-normalized expression for cells)."""
    if not (data_state or {}).get("genes"):
        return lambda cells: cells.double().numpy()
    from cdm4mi.data.expression import inverse_transform

    # Undoes the scaling and, for non-negative expression, reads a generator's negative values as zero.
    return lambda cells: inverse_transform(cells, data_state)


def score_images(generated: torch.Tensor, real: torch.Tensor, inception: torch.nn.Module, weights_name: str, out: Path,
                 device: str, seed: int, overwrite: bool) -> GenerationResult:
    overshoot = float((generated.abs() > 1).float().mean())
    report = image_generation_report(generated.clamp(-1, 1), real, inception, device=device, seed=seed, progress=True)
    if overshoot:  # the Inception takes [-1, 1]; a sampler without clip_x0 can step slightly outside
        report["notes"].append(f"{overshoot:.2%} of generated pixel values lay outside [-1, 1] and were clamped")
    report["inception_weights"] = weights_name
    result = GenerationResult(reports={"model": report})
    result.files.append(write_bio_report(report, out, overwrite=overwrite) / "summary.json")
    result.files.append(save_image_grid(generated[:64], out / "samples.png", title=f"{len(generated)} samples",
                                        overwrite=overwrite))
    return result
