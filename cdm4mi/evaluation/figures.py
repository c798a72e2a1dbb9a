"""PNG figures a person would rather look at than read: sample previews for any data shape."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cdm4mi.atomic import atomic_output  # noqa: E402


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


def save_png(figure: plt.Figure, path: str | Path, overwrite: bool) -> Path:
    """Write ``figure`` as a PNG atomically (refusing an existing file unless ``overwrite``) and close it."""
    try:
        with atomic_output(path, overwrite=overwrite) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
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
