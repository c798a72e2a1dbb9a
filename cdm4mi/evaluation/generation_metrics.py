"""FID and KID of generated images against reference images, from features of a feature network.

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature sets,
  ``||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½)``, in squared feature units.
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of MMD² with the cubic
  polynomial kernel ``k(x, y) = (x·y / d + 1)³``, averaged over random equal-size subsets of the two
  sets; reported as mean and SD over subsets. Unlike FID it is unbiased, so it can be negative, and
  it is comparable across set sizes.

The features are those of any network mapping images [N, C, H, W] to [N, F]: the FID Inception
(``inception.load_inception``) for numbers comparable with the literature, or another network (for
example one trained on medical images) when its distances are what one wants. FID from fewer images
than feature dimensions uses a rank-deficient covariance and is strongly biased upward; FID values
are only comparable at equal image counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

# KID defaults as in Bińkowski et al.'s code and torch-fidelity: 100 subsets of 1000 images.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def extract_features(
    network: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | np.ndarray,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Features [N, F] (float32, on the CPU) of ``images`` [N, C, H, W], computed in batches without gradients.

    ``network`` is run in eval mode on ``device``; an output [N, F, 1, 1] (a globally pooled map) is
    flattened to [N, F], any other output with spatial size is refused.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    images = torch.as_tensor(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"extract_features: expected images [N, C, H, W] with N >= 1, got shape {tuple(images.shape)}")
    if isinstance(network, torch.nn.Module):
        network.eval()
    batches = []
    starts = range(0, len(images), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="features", unit="batch", disable=not progress):
            output = network(images[start : start + batch_size].to(device))
            if output.ndim > 2 and all(size == 1 for size in output.shape[2:]):
                output = output.flatten(1)
            if output.ndim != 2:
                raise ValueError(f"extract_features: the network must give features [N, F], got {tuple(output.shape)}")
            batches.append(output.float().cpu())
    return torch.cat(batches)


def _feature_stats(features: torch.Tensor | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and sample covariance [F, F] (ddof 1) of features [N, F], in float64."""
    features = np.asarray(torch.as_tensor(features).double().cpu())
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"{name}: expected features [N, F] with N >= 2, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix; rounding-negative eigenvalues -> 0."""
    eigenvalues, eigenvectors = linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance ``||mu1 - mu2||² + tr(cov1 + cov2 - 2 (cov1 cov2)^½)`` of two Gaussians, in float64.

    ``tr((cov1 cov2)^½)`` is the sum of singular values of ``cov1^½ cov2^½`` (the eigenvalues of
    ``cov1 cov2`` are those of ``cov1^½ cov2 cov1^½``, the squared singular values), with the symmetric
    square roots taken by ``eigh``. pytorch-fid and MONAI (``monai.metrics.FIDMetric``) instead call
    ``scipy.linalg.sqrtm`` on the non-symmetric product ``cov1 cov2``; both agree on well-conditioned
    covariances, but with fewer images than features (singular covariances: 500 images of 2048-d
    Inception features) sqrtm loses about 1e-4 of the FID and gives FID(a, a) ≈ -2e-4, while this form
    stays at rounding level (1e-12) and needs no eps offset. MONAI's call also uses sqrtm's ``disp``
    argument, which SciPy 1.17 deprecates (removal in 1.18).
    """
    mu1, mu2 = (np.asarray(torch.as_tensor(mu).double().cpu()) for mu in (mu1, mu2))
    cov1, cov2 = (np.asarray(torch.as_tensor(cov).double().cpu()) for cov in (cov1, cov2))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(f"frechet_distance_from_stats: means {mu1.shape}, {mu2.shape} and covariances "
                         f"{cov1.shape}, {cov2.shape} do not describe two Gaussians of one dimension")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2  # a stored covariance may be asymmetric by rounding
    trace_sqrt_product = linalg.svdvals(_psd_sqrt(cov1) @ _psd_sqrt(cov2)).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """FID of two feature sets [N_a, F] and [N_b, F] (Gaussians fitted by sample mean and covariance, ddof 1)."""
    mu_a, cov_a = _feature_stats(features_a, "frechet_distance: features_a")
    mu_b, cov_b = _feature_stats(features_b, "frechet_distance: features_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"frechet_distance: feature dimensions differ ({mu_a.shape[0]} vs {mu_b.shape[0]})")
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


def _polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² of two equal-size samples [m, d] with k(x, y) = (x·y / d + 1)³.

    Within-set sums leave out the diagonal (i = j): ``1/(m(m-1)) Σ_{i≠j} [k(x_i, x_j) + k(y_i, y_j)]
    - 2/m² Σ_{i,j} k(x_i, y_j)``; the cross term keeps every pair, since x and y are independent.
    """
    m, dim = x.shape
    kernel_xx = (x @ x.T / dim + 1) ** 3
    kernel_yy = (y @ y.T / dim + 1) ** 3
    kernel_xy = (x @ y.T / dim + 1) ** 3
    within = (kernel_xx.sum() - kernel_xx.diagonal().sum() + kernel_yy.sum() - kernel_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * kernel_xy.sum() / m**2)


def kernel_inception_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID of feature sets [N_a, F] and [N_b, F]: ``(mean, sd)`` of the unbiased polynomial-kernel MMD² over subsets.

    Each of ``num_subsets`` draws ``subset_size`` features from each set without replacement (the
    size is clipped to the smaller set, which needs at least 2), seeded by ``seed``. The SD is the
    population SD over subsets (ddof 0), as torch-fidelity reports it.
    """
    a = torch.as_tensor(features_a).double().cpu()
    b = torch.as_tensor(features_b).double().cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel_inception_distance: expected features [N, F] of one F, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets: must be >= 1, got {num_subsets}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"kernel_inception_distance: subsets need at least 2 features from each set, got subset_size "
                         f"{subset_size} with {len(a)} and {len(b)} features")
    generator = np.random.default_rng(seed)
    estimates = [
        _polynomial_mmd2_unbiased(a[generator.choice(len(a), size, replace=False)],
                                  b[generator.choice(len(b), size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))


def image_generation_report(
    generated: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    network: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """FID and KID of ``generated`` against ``reference`` images [N, C, H, W], from ``network``'s features.

    Images go to ``network`` as given (the FID Inception wants [-1, 1]). Returns ``fid``, ``kid_mean``,
    ``kid_std``, ``kid_subsets``, ``kid_subset_size`` (after clipping), ``n_generated``,
    ``n_reference``, ``feature_dim`` and ``notes`` (caveats a reader of the numbers needs).
    """
    features_generated = extract_features(network, generated, batch_size=batch_size, device=device, progress=progress)
    features_reference = extract_features(network, reference, batch_size=batch_size, device=device, progress=progress)
    n_generated, n_reference = len(features_generated), len(features_reference)
    feature_dim = features_generated.shape[1]
    kid_mean, kid_std = kernel_inception_distance(features_generated, features_reference, num_subsets=num_subsets,
                                                  subset_size=subset_size, seed=seed)
    notes = []
    if min(n_generated, n_reference) <= feature_dim:
        notes.append(f"fewer images than feature dimensions ({min(n_generated, n_reference)} <= {feature_dim}): "
                     "the covariances are singular and FID is biased upward; compare FIDs only at equal image counts")
    return {
        "fid": frechet_distance(features_generated, features_reference),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": num_subsets,
        "kid_subset_size": min(subset_size, n_generated, n_reference),
        "n_generated": n_generated,
        "n_reference": n_reference,
        "feature_dim": feature_dim,
        "notes": notes,
    }
