"""Synthetic data sets: a 2-D Gaussian mixture and a correlated Gaussian (known ground truth), and the
two classic 2-D manifolds, moons and the swiss roll (scikit-learn's generators, rescaled; scikit-learn comes with
the ``bio`` extra and is imported when they are built).

Each split draws from its own seed (``seed`` for train, ``seed + 1`` for val, ``seed + 2`` for test),
so validation never repeats training points.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cdm4mi.data.registry import DATASETS
from cdm4mi.extras import require

_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


class TensorPoints(Dataset):
    """Rows of a [N, dim] tensor as ``{"x0": row}`` items, with the generating ``truth`` kept."""

    def __init__(self, points: torch.Tensor, truth: dict[str, torch.Tensor]):
        self.points = points.float()
        self.truth = truth

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x0": self.points[index]}


def _generator(seed: int, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed + _SPLIT_OFFSET[split])


@DATASETS.register("gaussian_mixture")
def gaussian_mixture(
    split: str,
    means: list[list[float]] = [[-2.0, -2.0], [2.0, -2.0], [0.0, 2.0]],  # noqa: B006 - pydantic copies it
    weights: list[float] = [0.5, 0.3, 0.2],  # noqa: B006
    std: float = 0.3,
    num_samples: int = 20_000,
    seed: int = 0,
) -> TensorPoints:
    """Points from ``sum_k w_k N(mean_k, std^2 I)``; ``truth`` holds means, weights, std."""
    means_t = torch.tensor(means, dtype=torch.float64)
    weights_t = torch.tensor(weights, dtype=torch.float64)
    if means_t.ndim != 2 or len(weights_t) != len(means_t):
        raise ValueError(f"data.weights: need one weight per mean ({len(means_t)}), got {len(weights_t)}")
    if (weights_t <= 0).any() or std <= 0:
        raise ValueError("data.weights and data.std must be positive")
    weights_t = weights_t / weights_t.sum()
    generator = _generator(seed, split)
    count = _split_count(num_samples, split)
    modes = torch.multinomial(weights_t, count, replacement=True, generator=generator)
    points = means_t[modes] + std * torch.randn(count, means_t.shape[1], generator=generator, dtype=torch.float64)
    return TensorPoints(points, {"means": means_t, "weights": weights_t, "std": torch.tensor(std)})


@DATASETS.register("correlated_gaussian")
def correlated_gaussian(split: str, dim: int = 8, num_samples: int = 20_000, seed: int = 0) -> TensorPoints:
    """Vectors from ``N(mean, cov)`` with a random mean and a random dense covariance (fixed by
    ``seed`` for every split): correlations up to ~0.8, variances ~0.3-1.2."""
    if dim < 2:
        raise ValueError(f"data.dim: must be >= 2, got {dim}")
    structure = torch.Generator().manual_seed(seed + 1000)
    mean = torch.randn(dim, generator=structure, dtype=torch.float64)
    factors = torch.randn(dim, dim // 2 + 1, generator=structure, dtype=torch.float64)
    cov = factors @ factors.T / factors.shape[1] + 0.1 * torch.eye(dim, dtype=torch.float64)
    generator = _generator(seed, split)
    count = _split_count(num_samples, split)
    points = mean + torch.randn(count, dim, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return TensorPoints(points, {"mean": mean, "cov": cov})


def _split_count(num_samples: int, split: str) -> int:
    return num_samples if split == "train" else max(num_samples // 10, 256)


@DATASETS.register("moons")
def moons(split: str, noise: float = 0.05, num_samples: int = 20_000, seed: int = 0) -> TensorPoints:
    """Two interleaving half circles (``sklearn.datasets.make_moons``), centred and doubled: about
    [-3, 3] x [-1.5, 1.5] (std ~1.7 and ~1.0); ``noise`` is the Gaussian jitter in the original units (radius 1)."""
    if noise < 0:
        raise ValueError(f"data.noise: must be >= 0, got {noise}")
    sklearn_datasets = require("sklearn.datasets", "data.name 'moons'")
    points, _ = sklearn_datasets.make_moons(_split_count(num_samples, split), noise=noise,
                                            random_state=seed + _SPLIT_OFFSET[split])
    points = (points - [0.5, 0.25]) * 2.0
    return TensorPoints(torch.from_numpy(points), {"noise": torch.tensor(noise)})


@DATASETS.register("swiss_roll")
def swiss_roll(split: str, noise: float = 0.2, num_samples: int = 20_000, seed: int = 0) -> TensorPoints:
    """The 2-D swiss roll: the (x, z) coordinates of ``sklearn.datasets.make_swiss_roll`` divided by 5
    (a spiral out to radius ~2.9, std ~1.3 per axis); ``noise`` is the jitter before scaling."""
    if noise < 0:
        raise ValueError(f"data.noise: must be >= 0, got {noise}")
    sklearn_datasets = require("sklearn.datasets", "data.name 'swiss_roll'")
    points, _ = sklearn_datasets.make_swiss_roll(_split_count(num_samples, split), noise=noise,
                                                 random_state=seed + _SPLIT_OFFSET[split])
    return TensorPoints(torch.from_numpy(points[:, [0, 2]] / 5.0), {"noise": torch.tensor(noise)})
