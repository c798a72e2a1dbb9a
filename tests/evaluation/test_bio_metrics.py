"""Generated-cell metrics: MMD, W1, moment correlations, kNN AUC, cell-type accuracy, the Gaussian baseline,
the report writer and the two figures."""

import csv
import importlib.util
import json
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy import sparse, stats

from cdm4mi.evaluation.bio_figures import save_embedding_overlay, save_gene_moment_plot
from cdm4mi.evaluation.bio_metrics import (
    as_cells,
    bio_generation_report,
    celltype_accuracy,
    fit_pca,
    gaussian_baseline,
    knn_auc,
    median_bandwidths,
    mmd_rbf,
    wasserstein1,
    wasserstein1_per_pc,
    write_bio_report,
)

N_CELLS, N_GENES = 500, 30
# Two samples of one distribution: the unbiased MMD² is 0 in expectation with an SD that shrinks
# like 1/n (a degenerate U-statistic, Gretton et al. 2012 §5); its kernel (3 RBFs) is at most 3.
# Over 30 seeds at these sizes the SD was 8e-4 and the largest |MMD²| 1.8e-3, so 0.01 is > 10 SD
# and still 16 times below the MMD² of a 0.5-SD mean shift (0.16).
MMD_NULL_TOLERANCE = 0.01
# kNN AUC of two samples of one distribution: over 30 seeds SD 0.016, range [0.457, 0.531].
AUC_NULL_TOLERANCE = 0.08


def gene_sample(seed: int, n: int = N_CELLS, shift: float = 0.0, spread: float = 1.0) -> np.ndarray:
    """Cells of correlated genes whose means (0..5) and SDs (0.5..2) differ, so per-gene moments vary."""
    genes = np.random.default_rng(1234)  # the same genes in every sample
    means, sds = genes.uniform(0, 5, N_GENES), genes.uniform(0.5, 2, N_GENES)
    mixing = np.eye(N_GENES) + 0.3 * genes.standard_normal((N_GENES, N_GENES)) / np.sqrt(N_GENES)
    z = np.random.default_rng(seed).standard_normal((n, N_GENES)) @ mixing
    return means + shift * sds + spread * sds * z


def test_two_samples_of_one_distribution_look_alike():
    report = bio_generation_report(gene_sample(1), gene_sample(2), n_components=10)
    assert abs(report["mmd_rbf"]) < MMD_NULL_TOLERANCE
    assert abs(report["knn_auc"] - 0.5) < AUC_NULL_TOLERANCE
    assert report["gene_mean_pearson"] > 0.99 and report["gene_mean_spearman"] > 0.98
    assert report["gene_var_pearson"] > 0.95 and report["gene_var_spearman"] > 0.9
    assert (report["n_real"], report["n_generated"], report["n_genes"], report["n_components"]) == (500, 500, 30, 10)
    assert 0 < report["pca_variance_explained"] < 1
    assert report["celltype_accuracy_generated"] is None
    json.dumps(report, allow_nan=False)  # plain JSON


def test_shifted_or_wider_samples_are_told_apart():
    real = gene_sample(1)
    small_shift = bio_generation_report(real, gene_sample(2, shift=0.5), n_components=10)
    large_shift = bio_generation_report(real, gene_sample(2, shift=3.0), n_components=10)
    wider = bio_generation_report(real, gene_sample(2, spread=2.0), n_components=10)
    assert small_shift["mmd_rbf"] > 5 * MMD_NULL_TOLERANCE and small_shift["knn_auc"] > 0.75
    assert large_shift["mmd_rbf"] > small_shift["mmd_rbf"] and large_shift["knn_auc"] > 0.99
    assert wider["mmd_rbf"] > 5 * MMD_NULL_TOLERANCE and wider["knn_auc"] > 0.7
    assert wider["gene_mean_pearson"] > 0.99  # means unchanged: only the spread differs
    variance_ratio = np.var(gene_sample(2, spread=2.0), axis=0, ddof=1) / np.var(real, axis=0, ddof=1)
    assert np.median(variance_ratio) == pytest.approx(4, rel=0.2)
    same = bio_generation_report(real, gene_sample(2), n_components=10)
    # W1 of two finite samples of ONE distribution is far from 0 in 10 dimensions (it shrinks like
    # n^(-1/10)); per PC it is close to 0, and a doubled spread doubles the per-PC spread of each sample
    assert wider["wasserstein1"] > 1.5 * same["wasserstein1"]
    assert wider["wasserstein1_per_pc"] > 5 * same["wasserstein1_per_pc"]


def test_mmd_of_a_sample_against_itself_has_its_closed_form():
    # Unbiased MMD² of x against x: the cross term keeps the n diagonal pairs k(x, x) = K (K
    # bandwidths), the within terms drop them, so MMD² = 2 (A − K) / n with A the off-diagonal mean.
    x = np.random.default_rng(0).standard_normal((300, 4))
    bandwidths = [1.0, 2.5]
    squared = ((x[:, None] - x[None]) ** 2).sum(-1)
    kernel = sum(np.exp(-squared / (2 * b**2)) for b in bandwidths)
    off_diagonal_mean = (kernel.sum() - np.trace(kernel)) / (300 * 299)
    value = mmd_rbf(x, x, bandwidths=bandwidths)
    assert value == pytest.approx(2 * (off_diagonal_mean - 2) / 300, rel=1e-9)
    assert -2 * 2 / 300 < value < 0
    assert abs(mmd_rbf(x, x)) < MMD_NULL_TOLERANCE
    # 1-D points 0, 1, 3: distances 1, 3, 2 -> median 2
    assert median_bandwidths(np.array([[0.0], [1.0], [3.0]])) == [1.0, 2.0, 4.0]
    # subsampling is seeded: the same call gives the same number, another seed another
    y = np.random.default_rng(1).standard_normal((300, 4)) + 0.3
    assert mmd_rbf(x, y, max_points=100, seed=3) == mmd_rbf(x, y, max_points=100, seed=3)
    assert mmd_rbf(x, y, max_points=100, seed=3) != mmd_rbf(x, y, max_points=100, seed=4)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_rbf(x, y, bandwidths=[0.0])


def test_wasserstein1_of_a_translate_is_the_translation_length():
    points = np.random.default_rng(0).standard_normal((200, 2))
    shift = np.array([3.0, 4.0])
    assert wasserstein1(points, points + shift) == pytest.approx(5.0, abs=1e-9)
    assert wasserstein1_per_pc(points, points + shift) == pytest.approx(3.5, abs=1e-9)  # mean of |3| and |4|
    assert wasserstein1(points, points) == 0.0


def test_wasserstein1_agrees_with_scipy_in_one_dimension():
    generator = np.random.default_rng(1)
    x, y = generator.normal(0, 1, (300, 1)), generator.exponential(2, (300, 1))
    expected = stats.wasserstein_distance(x[:, 0], y[:, 0])
    assert wasserstein1(x, y) == pytest.approx(expected, rel=1e-9)
    assert wasserstein1_per_pc(x, y) == pytest.approx(expected, rel=1e-12)
    # unequal sizes: both are subsampled to the smaller, so this is W1 of two 300-point samples
    assert wasserstein1(np.concatenate([x, x]), y) == pytest.approx(expected, rel=0.2)


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three cell types far apart (centres 10 apart, SD 1) in 10 genes."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, n)
    centres = 10 * np.eye(3, 10)
    return centres[labels] + generator.standard_normal((n, 10)), np.array(["B", "T", "NK"])[labels]


def test_celltype_accuracy_is_high_for_right_labels_and_chance_for_shuffled_ones():
    real, real_labels = clusters(300, 0)
    generated, intended = clusters(300, 1)
    right = celltype_accuracy(real, real_labels, generated, intended)
    assert right["celltype_accuracy_generated"] > 0.98 and right["celltype_accuracy_real_cv"] > 0.98
    assert right["n_celltypes"] == 3
    assert right["celltype_chance"] == max(np.mean(real_labels == name) for name in ("B", "T", "NK"))
    shuffled = celltype_accuracy(real, real_labels, generated, np.random.default_rng(2).permutation(intended))
    assert abs(shuffled["celltype_accuracy_generated"] - 1 / 3) < 0.1
    with pytest.raises(ValueError, match="do not occur"):
        celltype_accuracy(real, real_labels, generated, np.where(intended == "B", "DC", intended))
    with pytest.raises(ValueError, match="one label per cell"):
        celltype_accuracy(real, real_labels[:-1], generated, intended)


def test_gaussian_baseline_matches_mean_and_covariance_of_few_cells_in_many_genes():
    train = np.random.default_rng(0).gamma(2.0, 1.0, (30, 50))  # 30 cells, 50 genes: a singular covariance
    samples = gaussian_baseline(train, 40000, seed=1)
    assert samples.shape == (40000, 50)
    assert np.abs(samples.mean(0) - train.mean(0)).max() < 0.05
    covariance = np.cov(train.T)
    assert np.linalg.norm(np.cov(samples.T) - covariance) / np.linalg.norm(covariance) < 0.03
    # every sample lies in the affine span of the training cells: nothing in the other 21 directions
    _, _, directions = np.linalg.svd(train - train.mean(0))
    outside = (samples - train.mean(0)) @ directions[29:].T
    assert np.abs(outside).max() < 1e-9
    assert np.array_equal(gaussian_baseline(train, 5, seed=3), gaussian_baseline(train, 5, seed=3))


def pbmc68k_reduced() -> tuple[np.ndarray, np.ndarray]:
    """scanpy's shipped 700 PBMCs × 765 genes, log-normalized (``raw.X``), with their ``bulk_labels``."""
    anndata = pytest.importorskip("anndata")
    if importlib.util.find_spec("scanpy") is None:
        pytest.skip("scanpy (which ships pbmc68k_reduced) is not installed")
    folder = importlib.util.find_spec("scanpy").submodule_search_locations[0]
    with warnings.catch_warnings():  # the file predates today's anndata layout, which it warns about
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(folder + "/datasets/10x_pbmc68k_reduced.h5ad")
    return adata.raw.X.toarray(), adata.obs["bulk_labels"].astype(str).to_numpy()


def test_metrics_tell_real_cells_from_the_gaussian_baseline_on_pbmc():
    cells, cell_types = pbmc68k_reduced()
    order = np.random.default_rng(0).permutation(len(cells))
    train, heldout = order[:350], order[350:]
    gaussian = gaussian_baseline(cells[train], len(heldout), seed=0)
    real_vs_real = bio_generation_report(cells[heldout], cells[train], cell_types[heldout], cell_types[train])
    real_vs_gaussian = bio_generation_report(cells[heldout], gaussian)
    assert real_vs_real["n_genes"] == 765 and real_vs_real["n_components"] == 50
    assert real_vs_gaussian["mmd_rbf"] > 1.3 * real_vs_real["mmd_rbf"] > 0
    assert real_vs_gaussian["knn_auc"] > real_vs_real["knn_auc"] + 0.2
    assert real_vs_gaussian["wasserstein1"] > real_vs_real["wasserstein1"]
    # real training cells are what a perfect class-conditional generator would give
    assert real_vs_real["n_celltypes"] == 10
    assert abs(real_vs_real["celltype_accuracy_generated"] - real_vs_real["celltype_accuracy_real_cv"]) < 0.1
    assert real_vs_real["celltype_accuracy_generated"] > real_vs_real["celltype_chance"] + 0.3
    json.dumps(real_vs_real, allow_nan=False)


def test_inputs_are_checked_and_pca_is_clipped():
    cells = np.random.default_rng(0).standard_normal((10, 30))
    assert fit_pca(cells, n_components=50).n_components_ == 9
    assert np.array_equal(as_cells(torch.tensor(cells)), cells)
    assert np.array_equal(as_cells(sparse.csr_matrix(cells)), cells)
    with pytest.raises(ValueError, match="genes"):
        mmd_rbf(cells, cells[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        as_cells(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="real_labels and generated_labels"):
        bio_generation_report(cells, cells, real_labels=["a"] * 10)
    with pytest.raises(ValueError, match="folds"):
        knn_auc(cells[:3], cells[:3])


def test_report_writer(tmp_path):
    report = bio_generation_report(gene_sample(1, n=100), gene_sample(2, n=100), n_components=5)
    report["gene_var_pearson"] = float("nan")  # must become null, not NaN
    single = write_bio_report(report, tmp_path / "single")
    assert sorted(item.name for item in single.iterdir()) == ["summary.json"]
    assert json.loads((single / "summary.json").read_text())["gene_var_pearson"] is None

    baseline = bio_generation_report(gene_sample(1, n=100), gaussian_baseline(gene_sample(3, n=100), 100), n_components=5)
    out = write_bio_report({"model": report, "gaussian": baseline}, tmp_path / "both")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["model", "gaussian"]
    assert float(rows[1]["mmd_rbf"]) == pytest.approx(baseline["mmd_rbf"])
    assert rows[0]["gene_var_pearson"] == "" and rows[0]["celltype_accuracy_generated"] == ""
    assert json.loads((out / "summary.json").read_text())["gaussian"]["knn_auc"] == pytest.approx(baseline["knn_auc"])
    with pytest.raises(FileExistsError):
        write_bio_report({"model": report}, out)
    write_bio_report({"model": report}, out, overwrite=True)
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="mix"):
        write_bio_report({"model": report, "n": 3}, tmp_path / "mixed")


def assert_png(path, min_bytes: int = 10_000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
    return matplotlib.image.imread(path)


def test_figures_are_written(tmp_path, monkeypatch):
    real, real_labels = clusters(200, 0)
    generated, intended = clusters(150, 1)
    one_panel = assert_png(save_embedding_overlay(real, generated, tmp_path / "overlay.png"))
    two_panels = assert_png(save_embedding_overlay(real, torch.tensor(generated), tmp_path / "overlay_types.png",
                                                   real_labels=real_labels, generated_labels=intended, title="clusters"))
    assert two_panels.shape[1] > 1.5 * one_panel.shape[1]  # a second panel and a legend
    moments = assert_png(save_gene_moment_plot(real, generated, tmp_path / "moments.png"))
    assert moments.shape[1] > moments.shape[0]  # two panels side by side
    with pytest.raises(FileExistsError):
        save_gene_moment_plot(real, generated, tmp_path / "moments.png")
    with pytest.raises(ValueError, match="method"):
        save_embedding_overlay(real, generated, tmp_path / "tsne.png", method="tsne")
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(ValueError, match="umap-learn"):
        save_embedding_overlay(real, generated, tmp_path / "umap.png", method="umap")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["moments.png", "overlay.png", "overlay_types.png"]
