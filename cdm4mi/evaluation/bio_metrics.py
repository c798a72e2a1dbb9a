"""Generated gene-expression vectors (cells) against held-out real cells: distances, moments, classifiers.

Inputs are cells [N, G] — numpy arrays, torch tensors or scipy sparse matrices — with real and
generated in the SAME units (log-normalized expression, or a model's standardized units); nothing
here rescales them. Distribution distances and classifiers work in a PCA space fitted on the real
cells only, so a generator cannot move the axes it is judged on; per-gene moments use the genes
themselves. Every subsample is drawn with a seed: the same inputs give the same numbers.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse, stats
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cdm4mi.atomic import atomic_output, check_writable
from cdm4mi.evaluation.statistics import finite_or_none

MMD_BANDWIDTH_SCALES = (0.5, 1.0, 2.0)  # times the median pairwise distance
MMD_MAX_POINTS = 2000  # per set: the kernel matrices are O(points²)
WASSERSTEIN_MAX_POINTS = 1000  # per set: the assignment is O(points³)
KNN_MAX_POINTS = 5000  # per set


def as_cells(cells, name: str = "cells") -> np.ndarray:
    """``cells`` [N, G] (numpy, torch, scipy sparse) as a float64 numpy array; refuses other shapes and NaN/inf."""
    if sparse.issparse(cells):
        cells = cells.toarray()
    elif hasattr(cells, "detach"):
        cells = cells.detach().cpu().numpy()
    cells = np.asarray(cells, dtype=np.float64)
    if cells.ndim != 2 or cells.shape[0] == 0:
        raise ValueError(f"{name}: expected cells [N, G] with N >= 1, got shape {cells.shape}")
    if not np.isfinite(cells).all():
        raise ValueError(f"{name}: holds NaN or inf values")
    return cells


def as_cell_pair(real, generated) -> tuple[np.ndarray, np.ndarray]:
    """``as_cells`` of both sets; refuses sets with different numbers of genes."""
    real, generated = as_cells(real, "real"), as_cells(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"generated: has {generated.shape[1]} genes, the real cells {real.shape[1]}")
    return real, generated


def _subsample(cells: np.ndarray, max_points: int, generator: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` rows drawn without replacement (all rows, in order, when there are few enough)."""
    if len(cells) <= max_points:
        return cells
    return cells[np.sort(generator.choice(len(cells), size=max_points, replace=False))]


def fit_pca(real, n_components: int = 50, seed: int = 0) -> PCA:
    """PCA (centred, not scaled) fitted on the real cells only; project any set with ``.transform``.

    ``n_components`` is clipped to min(N, G) − 1, the most a centred fit of N cells can have.
    """
    real = as_cells(real, "real")
    limit = min(real.shape) - 1
    if limit < 1:
        raise ValueError(f"real: a PCA needs at least 2 cells and 2 genes, got shape {real.shape}")
    if n_components < 1:
        raise ValueError(f"n_components: must be >= 1, got {n_components}")
    return PCA(n_components=min(n_components, limit), random_state=seed).fit(real)


def median_bandwidths(pooled: np.ndarray, scales: Sequence[float] = MMD_BANDWIDTH_SCALES) -> list[float]:
    """RBF bandwidths: the median Euclidean distance between distinct pooled cells times each scale.

    The median heuristic (Gretton et al. 2012, JMLR 13:723) puts the kernel's length scale at the
    typical distance between cells; the scales around it keep the test sensitive to differences
    finer and coarser than that.
    """
    median = float(np.median(pdist(pooled)))
    if median <= 0:
        raise ValueError("mmd_rbf: the median pairwise distance is 0 (most cells are identical); pass bandwidths")
    return [median * scale for scale in scales]


def _mmd(x, y, bandwidths: Sequence[float] | None, max_points: int, seed: int) -> tuple[float, list[float]]:
    x, y = as_cell_pair(x, y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd_rbf: each set needs at least 2 cells, got {len(x)} and {len(y)}")
    generator = np.random.default_rng(seed)
    x, y = _subsample(x, max_points, generator), _subsample(y, max_points, generator)
    bandwidths = median_bandwidths(np.concatenate([x, y])) if bandwidths is None else [float(b) for b in bandwidths]
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths: need one or more positive lengths, got {bandwidths}")

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        squared = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-squared / (2 * bandwidth**2)) for bandwidth in bandwidths)

    def off_diagonal_mean(matrix: np.ndarray) -> float:
        n = len(matrix)
        return (matrix.sum() - np.trace(matrix)) / (n * (n - 1))

    value = off_diagonal_mean(kernel(x, x)) + off_diagonal_mean(kernel(y, y)) - 2 * kernel(x, y).mean()
    return float(value), bandwidths


def mmd_rbf(x, y, bandwidths: Sequence[float] | None = None, max_points: int = MMD_MAX_POINTS, seed: int = 0) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012, eq. 3) between cells ``x`` and ``y``.

    The kernel is a SUM of RBF kernels exp(−|a − b|² / 2σ²), one per bandwidth σ (so k(a, a) equals
    the number of bandwidths). Default bandwidths: ``median_bandwidths`` of the pooled cells. Each
    set is first subsampled to at most ``max_points`` cells (seeded). The estimate is 0 in
    expectation for two samples of one distribution and can then be slightly negative.
    """
    return _mmd(x, y, bandwidths, max_points, seed)[0]


def wasserstein1(x, y, max_points: int = WASSERSTEIN_MAX_POINTS, seed: int = 0) -> float:
    """Exact 1-Wasserstein (earth mover's) distance between two equal-size samples of cells, Euclidean cost.

    Both sets are subsampled (seeded) to n = min(len(x), len(y), ``max_points``) cells. Between two
    uniform distributions on n points each, an optimal transport plan is a one-to-one matching
    (Birkhoff–von Neumann), found exactly by ``scipy.optimize.linear_sum_assignment``; W1 is the
    mean matched distance, in the units of the inputs.
    """
    x, y = as_cell_pair(x, y)
    n = min(len(x), len(y), max_points)
    generator = np.random.default_rng(seed)
    x, y = _subsample(x, n, generator), _subsample(y, n, generator)
    cost = cdist(x, y)
    rows, columns = linear_sum_assignment(cost)
    return float(cost[rows, columns].mean())


def wasserstein1_per_pc(x, y) -> float:
    """Mean over columns (principal components) of the 1-D W1 of that column (``scipy.stats.wasserstein_distance``), all cells."""
    x, y = as_cell_pair(x, y)
    return float(np.mean([stats.wasserstein_distance(x[:, column], y[:, column]) for column in range(x.shape[1])]))


def gene_moments(cells) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample variance (ddof 1; 0 for a single cell) of cells [N, G], each [G]."""
    cells = as_cells(cells)
    variance = cells.var(axis=0, ddof=1) if len(cells) > 1 else np.zeros(cells.shape[1])
    return cells.mean(axis=0), variance


def _correlation(method, a: np.ndarray, b: np.ndarray) -> float:
    """NaN when either side is constant (a correlation is undefined there)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(method(a, b)[0])


def gene_moment_agreement(real, generated) -> dict[str, float]:
    """Pearson and Spearman correlations across genes of the per-gene means, and of the per-gene
    variances, real against generated: 1 = every gene's level (or spread) is reproduced up to scale."""
    real, generated = as_cell_pair(real, generated)
    (real_mean, real_var), (generated_mean, generated_var) = gene_moments(real), gene_moments(generated)
    return {
        "gene_mean_pearson": _correlation(stats.pearsonr, real_mean, generated_mean),
        "gene_mean_spearman": _correlation(stats.spearmanr, real_mean, generated_mean),
        "gene_var_pearson": _correlation(stats.pearsonr, real_var, generated_var),
        "gene_var_spearman": _correlation(stats.spearmanr, real_var, generated_var),
    }


def knn_auc(real, generated, k: int = 5, folds: int = 5, seed: int = 0, max_points: int = KNN_MAX_POINTS) -> float:
    """Cross-validated ROC AUC of a k-nearest-neighbour classifier told to separate real from generated cells.

    Both sets are subsampled (seeded) to the same n = min(len(real), len(generated), ``max_points``)
    cells, so chance is exactly balanced; the AUC is the mean over ``folds`` stratified folds.
    0.5 = indistinguishable, 1 = fully separable. Pass PCA coordinates (``bio_generation_report``
    does): Euclidean neighbours in thousands of noisy genes say little.
    """
    real, generated = as_cell_pair(real, generated)
    n = min(len(real), len(generated), max_points)
    if folds < 2 or n < folds:
        raise ValueError(f"folds: need 2 <= folds <= cells per set ({n}), got {folds}")
    smallest_training_fold = 2 * n - math.ceil(2 * n / folds)
    if not 1 <= k <= smallest_training_fold:
        raise ValueError(f"k: need 1 <= k <= {smallest_training_fold} (the training cells of a fold), got {k}")
    generator = np.random.default_rng(seed)
    cells = np.concatenate([_subsample(real, n, generator), _subsample(generated, n, generator)])
    is_generated = np.repeat([0, 1], n)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), cells, is_generated, cv=splits, scoring="roc_auc")
    return float(scores.mean())


def as_labels(labels, count: int, name: str = "labels") -> np.ndarray:
    """One label per cell (list, numpy, torch, pandas) as a numpy array of text; refuses a wrong count."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).astype(str)
    if labels.shape != (count,):
        raise ValueError(f"{name}: expected one label per cell ({count}), got shape {labels.shape}")
    return labels


def celltype_classifier():
    """The cell-type classifier: multinomial logistic regression (L2, C = 1) on standardized features."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def celltype_accuracy(real, real_labels, generated, generated_labels, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Does each generated cell look like the cell type it was generated for?

    A ``celltype_classifier`` (logistic regression) is trained on all real cells with their cell
    types and applied to the generated cells; ``celltype_accuracy_generated`` is the fraction whose
    predicted type is their intended one. For reference, ``celltype_accuracy_real_cv`` is the same
    classifier's stratified ``folds``-fold cross-validated accuracy on real cells: what a perfect
    generator would reach. ``celltype_chance`` is the accuracy of always answering the most common
    real cell type. Labels may be strings or integers (compared as text).
    """
    real, generated = as_cell_pair(real, generated)
    real_labels = as_labels(real_labels, len(real), "real_labels")
    generated_labels = as_labels(generated_labels, len(generated), "generated_labels")
    known = set(real_labels)
    unknown = sorted(set(generated_labels) - known)
    if unknown:
        raise ValueError(f"generated_labels: cell types {unknown[:5]} do not occur among the real cells")
    if len(known) < 2:
        raise ValueError(f"real_labels: need at least 2 cell types to classify, got {sorted(known)}")
    classifier = celltype_classifier().fit(real, real_labels)
    generated_accuracy = float(np.mean(classifier.predict(generated) == generated_labels))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    real_accuracy = float(cross_val_score(celltype_classifier(), real, real_labels, cv=splits).mean())
    _, counts = np.unique(real_labels, return_counts=True)
    return {"celltype_accuracy_generated": generated_accuracy, "celltype_accuracy_real_cv": real_accuracy,
            "celltype_chance": float(counts.max() / counts.sum()), "n_celltypes": len(known)}


def bio_generation_report(real, generated, real_labels=None, generated_labels=None, n_components: int = 50,
                          seed: int = 0, pca_cells=None) -> dict:
    """All metrics of generated cells against real ones, as one flat JSON-ready dict.

    PCA (``fit_pca``) is fitted on the real cells, or on ``pca_cells`` (other real cells, e.g. the
    training set) when given; MMD², W1 (exact, and per PC) and the kNN AUC are computed on both
    sets projected onto it, in the inputs' units. Fitted on few real cells (hundreds), the last PCs
    partly follow those cells' own noise, so ANY other sample — even more real cells — sits a little
    apart from them there: compare a generator with a real-vs-real reference under the same PCA. Per-gene moment correlations use
    the genes. With both label arrays, adds ``celltype_accuracy`` (on the PCA coordinates); without,
    those keys are ``None``. Keys::

        n_real, n_generated, n_genes, n_components, pca_variance_explained (fraction of the real
        cells' variance the PCs hold), mmd_rbf, mmd_median_distance (bandwidths are this times
        0.5, 1, 2), wasserstein1, wasserstein1_per_pc, gene_mean_pearson, gene_mean_spearman,
        gene_var_pearson, gene_var_spearman, knn_auc, celltype_accuracy_generated,
        celltype_accuracy_real_cv, celltype_chance, n_celltypes, seed

    An undefined value (a correlation against a constant) is ``None``.
    """
    real, generated = as_cell_pair(real, generated)
    if (real_labels is None) != (generated_labels is None):
        raise ValueError("bio_generation_report: pass both real_labels and generated_labels, or neither")
    pca_cells = real if pca_cells is None else as_cells(pca_cells, "pca_cells")
    pca = fit_pca(pca_cells, n_components=n_components, seed=seed)
    real_pcs, generated_pcs = pca.transform(real), pca.transform(generated)
    mmd, bandwidths = _mmd(real_pcs, generated_pcs, None, MMD_MAX_POINTS, seed)
    report = {
        "n_real": len(real), "n_generated": len(generated), "n_genes": real.shape[1],
        "n_components": int(pca.n_components_),
        "pca_variance_explained": float(pca.explained_variance_ratio_.sum()),
        "mmd_rbf": mmd,
        "mmd_median_distance": bandwidths[MMD_BANDWIDTH_SCALES.index(1.0)],
        "wasserstein1": wasserstein1(real_pcs, generated_pcs, seed=seed),
        "wasserstein1_per_pc": wasserstein1_per_pc(real_pcs, generated_pcs),
        **gene_moment_agreement(real, generated),
        "knn_auc": knn_auc(real_pcs, generated_pcs, seed=seed),
        "celltype_accuracy_generated": None, "celltype_accuracy_real_cv": None, "celltype_chance": None,
        "n_celltypes": None,
    }
    if real_labels is not None:
        report.update(celltype_accuracy(real_pcs, real_labels, generated_pcs, generated_labels, seed=seed))
    report["seed"] = seed
    return finite_or_none(report)


def gaussian_baseline(train_real, n: int, seed: int = 0) -> np.ndarray:
    """``n`` cells [n, G] (float64) drawn from the Gaussian with the training cells' mean and full covariance.

    The baseline every generative model of cells must beat: it reproduces every gene's mean and
    variance and every gene–gene covariance, but nothing beyond (no clusters, no zeros, negative
    values allowed). Samples are mean + z · diag(s / sqrt(N − 1)) · Vᵀ from the thin SVD of the
    centred cells (z standard normal): exact for the sample covariance even when it is singular
    (fewer cells than genes), without forming the G × G matrix and without a ridge that would add
    variance in directions the cells never vary in.
    """
    train_real = as_cells(train_real, "train_real")
    if len(train_real) < 2:
        raise ValueError(f"train_real: a covariance needs at least 2 cells, got {len(train_real)}")
    if n < 1:
        raise ValueError(f"n: must be >= 1 cell, got {n}")
    mean = train_real.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(train_real - mean, full_matrices=False)
    scales = singular_values / np.sqrt(len(train_real) - 1)
    z = np.random.default_rng(seed).standard_normal((n, len(scales)))
    return mean + (z * scales) @ directions


def write_bio_report(report: dict, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``summary.json`` in ``out_dir``; for ``{method: report}`` also ``metrics.csv``, one row per method.

    A single report (a ``bio_generation_report`` dict) gives summary.json only. The CSV's columns
    are ``method`` then every scalar key in order of first appearance; ``None`` is an empty cell.
    NaN and ±inf become ``null`` in JSON. Files are written atomically; an existing one is kept
    unless ``overwrite``. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    values = list(report.values())
    by_method = bool(values) and all(isinstance(value, dict) for value in values)
    if not by_method and any(isinstance(value, dict) for value in values):
        raise ValueError("write_bio_report: pass one report, or {method: report}, not a mix")
    text = json.dumps(finite_or_none(report), indent=2, allow_nan=False)
    for name in ("summary.json", "metrics.csv") if by_method else ("summary.json",):
        check_writable(out_dir / name, overwrite, option=str(out_dir / name))  # before writing either
    with atomic_output(out_dir / "summary.json", overwrite=overwrite) as temporary:
        temporary.write_text(text + "\n")
    if by_method:
        columns = list(dict.fromkeys(key for method_report in values for key, value in method_report.items()
                                     if not isinstance(value, (dict, list, tuple))))
        with atomic_output(out_dir / "metrics.csv", overwrite=overwrite) as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["method", *columns])
                for method, method_report in report.items():
                    row = finite_or_none([method_report.get(column) for column in columns])
                    writer.writerow([method, *("" if value is None else value for value in row)])
    return out_dir
