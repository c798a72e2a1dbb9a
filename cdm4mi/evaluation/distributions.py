"""Compare generated samples with a known generating distribution (toy and synthetic data)."""

from __future__ import annotations

import torch


def mixture_report(samples: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, std: float) -> dict[str, list[float] | float]:
    """Assign each sample to its nearest mixture mean; report per-mode proportion and mean.

    ``outlier_fraction`` counts samples farther than 4 std from every mean (between modes).
    """
    samples, means = samples.double(), means.double()
    distances = torch.cdist(samples, means)
    nearest = distances.argmin(dim=1)
    proportions, mode_means = [], []
    for mode in range(len(means)):
        members = samples[nearest == mode]
        proportions.append(len(members) / len(samples))
        mode_means.append(members.mean(0).tolist() if len(members) else [float("nan")] * means.shape[1])
    outliers = (distances.min(dim=1).values > 4 * std * means.shape[1] ** 0.5).double().mean().item()
    return {
        "proportions": proportions,
        "true_proportions": (weights / weights.sum()).tolist(),
        "mode_means": mode_means,
        "true_means": means.tolist(),
        "outlier_fraction": outliers,
    }


def moment_report(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> dict[str, float]:
    """Errors of the sample mean and covariance against the true ones (max abs; relative Frobenius)."""
    samples = samples.double()
    sample_cov = torch.cov(samples.T)
    return {
        "mean_max_abs_error": (samples.mean(0) - mean).abs().max().item(),
        "cov_max_abs_error": (sample_cov - cov).abs().max().item(),
        "cov_relative_frobenius_error": (torch.linalg.norm(sample_cov - cov) / torch.linalg.norm(cov)).item(),
    }
