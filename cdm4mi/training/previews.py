"""Training previews: at each validation, a few samples drawn from the model beside validation data, as a PNG
(``<output_dir>/previews/step*.png``) and two logged moments. A Lightning callback, so the module knows
nothing of figures; ``save_sample_preview`` is also what ``cdm4mi sample`` draws with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from cdm4mi.atomic import atomic_output  # noqa: E402
from cdm4mi.diffusion import warm_start  # noqa: E402
from cdm4mi.training.module import pad_images  # noqa: E402


class SamplePreviews(Callback):
    """Samples ``count`` items like the first validation batch (from the prior, or warm-started at
    ``t_start`` from the batch itself) after every validation, on the first process only."""

    def __init__(self, count: int, t_start: int | None, seed: int, folder: Path):
        self.count, self.t_start, self.seed, self.folder = count, t_start, seed, Path(folder)
        self._batch: dict[str, Any] | None = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._batch = batch

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.count == 0 or self._batch is None or not trainer.is_global_zero:
            return
        batch = pad_images(self._batch, pl_module.backbone.size_multiple)
        reference = batch["x0"][: self.count]
        cond = first_samples(batch.get("cond"), self.count)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        if self.t_start is None:
            x = pl_module.prior(reference.shape, generator, dtype=reference.dtype)
        else:
            noise = torch.randn(reference.shape, generator=generator, device=pl_module.device, dtype=reference.dtype)
            x = warm_start(pl_module.schedule, reference, self.t_start, noise)
        samples = pl_module.sample(x, cond, t_start=self.t_start, generator=generator)
        # Moments of generated vs. validation data: a cheap, shape-agnostic check that sampling works.
        pl_module.log("val/sample_mean_error", (samples.mean(0) - reference.mean(0)).abs().mean(), rank_zero_only=True)
        pl_module.log("val/sample_std_error", (samples.std(0) - reference.std(0)).abs().mean(), rank_zero_only=True)
        step = trainer.global_step
        save_sample_preview(samples, reference, self.folder / f"step{step:07d}.png", title=f"step {step}")


def first_samples(cond: object, count: int) -> object:
    """The first ``count`` samples of a batched condition: a tensor, a dict of them, or None."""
    if torch.is_tensor(cond):
        return cond[:count]
    if isinstance(cond, dict):
        return {key: first_samples(value, count) for key, value in cond.items()}
    return cond


def save_sample_preview(samples: torch.Tensor, reference: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Draw generated ``samples`` beside ``reference`` data of the same shape and write a PNG.

    Points [N, 2]: scatter over the data. Vectors [N, D]: both projected on the data's first two
    principal components. Images [N, C, H, W]: a grid of the first channel. Volumes
    [N, C, D, H, W]: a grid of middle axial slices.
    """
    samples, reference = samples.detach().float().cpu(), reference.detach().float().cpu()
    if samples.ndim == 2:
        figure = _scatter(samples, reference)
    elif samples.ndim in (4, 5):
        figure = _image_grid(samples, reference)
    else:
        raise ValueError(f"preview: cannot draw samples of shape {tuple(samples.shape)}")
    figure.suptitle(title)
    with atomic_output(path, overwrite=True) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight", format="png")
    plt.close(figure)
    return Path(path)



def _scatter(samples: torch.Tensor, reference: torch.Tensor) -> plt.Figure:
    if samples.shape[1] == 2:
        project, labels = (lambda x: x.numpy()), ("x1", "x2")
    else:
        mean = reference.mean(0)
        _, _, components = torch.linalg.svd(reference - mean, full_matrices=False)
        project, labels = (lambda x: ((x - mean) @ components[:2].T).numpy()), ("PC1", "PC2")
    figure, axis = plt.subplots(figsize=(5, 5))
    data, generated = project(reference), project(samples)
    axis.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, label="data", color="tab:gray")
    axis.scatter(generated[:, 0], generated[:, 1], s=3, alpha=0.5, label="generated", color="tab:red")
    axis.set_xlabel(labels[0])
    axis.set_ylabel(labels[1])
    axis.legend(loc="upper right", markerscale=4)
    return figure


def _image_grid(samples: torch.Tensor, reference: torch.Tensor, columns: int = 8) -> plt.Figure:
    def middle(images: torch.Tensor) -> np.ndarray:
        images = images[:, 0]
        return (images[:, images.shape[1] // 2] if images.ndim == 4 else images).numpy()

    rows = [("data", middle(reference[:columns])), ("generated", middle(samples[: columns * 2]))]
    count = sum(int(np.ceil(len(images) / columns)) for _, images in rows)
    low, high = np.percentile(middle(reference), [1, 99])
    figure, axes = plt.subplots(count, columns, figsize=(1.6 * columns, 1.7 * count), squeeze=False)
    row = 0
    for label, images in rows:
        for start in range(0, len(images), columns):
            for column in range(columns):
                axis = axes[row, column]
                axis.axis("off")
                if start + column < len(images):
                    axis.imshow(images[start + column], cmap="gray", vmin=low, vmax=high)
            axes[row, 0].set_title(label, fontsize=8, loc="left")
            row += 1
    return figure
