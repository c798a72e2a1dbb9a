"""Figures for generated cells: an embedding overlay with real cells, and per-gene moment scatters.

Cells are [N, G] in the same units for real and generated (see ``bio_metrics``). Embeddings are
fitted on the real cells only and the generated cells are projected into them, so the real cells'
picture does not change with the generator.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from cdm4mi.evaluation.bio_metrics import as_cell_pair, as_labels, fit_pca, gene_moments  # noqa: E402
from cdm4mi.evaluation.figures import save_png  # noqa: E402

EMBEDDING_METHODS = ("pca", "umap")
UMAP_INPUT_COMPONENTS = 50  # UMAP runs on the real cells' leading PCs, as is usual for expression data


def save_embedding_overlay(real, generated, path: str | Path, real_labels=None, generated_labels=None,
                           method: str = "pca", title: str = "", seed: int = 0, overwrite: bool = False) -> Path:
    """Scatter of real and generated cells on a 2-D embedding fitted on the real cells; writes a PNG.

    ``method="pca"``: the real cells' first two principal components. ``method="umap"``: UMAP
    (umap-learn) fitted on the real cells' leading PCs, the generated cells placed with its
    ``transform`` (a ValueError if umap-learn is not installed). Left panel: real cells grey, the
    generated ones red. With labels, a right panel colours the real cells (dots) by ``real_labels``
    and the generated cells (crosses) by ``generated_labels``, their intended cell type in
    class-conditional generation; a set without labels is drawn there in grey (real) or black
    (generated). Written atomically; refuses to replace ``path`` unless ``overwrite``.
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"method: must be one of {EMBEDDING_METHODS}, got {method!r}")
    real, generated = as_cell_pair(real, generated)
    real_labels = None if real_labels is None else as_labels(real_labels, len(real), "real_labels")
    generated_labels = None if generated_labels is None else as_labels(generated_labels, len(generated), "generated_labels")
    real_xy, generated_xy, axis_names = _embed(real, generated, method, seed)
    cell_types = sorted(set(real_labels if real_labels is not None else []) | set(
        generated_labels if generated_labels is not None else []))
    colours = dict(zip(cell_types, _palette(len(cell_types)), strict=True))

    panels = 2 if cell_types else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels + (2.6 if cell_types else 0), 5), squeeze=False,
                                layout="constrained")
    left = axes[0, 0]
    left.scatter(real_xy[:, 0], real_xy[:, 1], s=4, alpha=0.5, color="tab:gray")
    left.scatter(generated_xy[:, 0], generated_xy[:, 1], s=4, alpha=0.5, color="tab:red")
    left.set_title("real vs generated", fontsize=10)
    if cell_types:
        right = axes[0, 1]
        _draw_by_type(right, real_xy, real_labels, colours, "o", "tab:gray", size=4, alpha=0.3)
        _draw_by_type(right, generated_xy, generated_labels, colours, "x", "black", size=10, alpha=0.8)
        right.set_title("cell types: real (dots), generated (x)", fontsize=10)
    for axis in axes[0]:
        axis.set_xlabel(axis_names[0])
        axis.set_ylabel(axis_names[1])

    def marker(colour, label: str, symbol: str = "o") -> tuple:
        return plt.Line2D([], [], marker=symbol, linestyle="", color=colour), label

    entries = [marker("tab:gray", f"real ({len(real)})"), marker("tab:red", f"generated ({len(generated)})")]
    if cell_types:
        if generated_labels is None:
            entries.append(marker("black", "generated (no labels)", "x"))
        entries += [marker(colours[cell_type], cell_type) for cell_type in cell_types]
    handles, names = [handle for handle, _ in entries], [name for _, name in entries]
    if cell_types:  # cell-type names are long: one legend beside the last panel
        axes[0, -1].legend(handles, names, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    else:
        left.legend(handles, names, loc="upper right", fontsize=8)
    figure.suptitle(title or f"{method.upper()} fitted on {len(real)} real cells, {len(generated)} generated")
    return save_png(figure, path, overwrite)


def _embed(real: np.ndarray, generated: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    if method == "pca":
        pca = fit_pca(real, n_components=2, seed=seed)
        return pca.transform(real), pca.transform(generated), ("PC1 (real)", "PC2 (real)")
    try:
        import umap
    except ImportError:
        raise ValueError("method: 'umap' needs umap-learn, which is not installed; use method='pca' "
                         "(or pip install umap-learn)") from None
    pca = fit_pca(real, n_components=UMAP_INPUT_COMPONENTS, seed=seed)
    reducer = umap.UMAP(n_components=2, random_state=seed).fit(pca.transform(real))
    return reducer.embedding_, reducer.transform(pca.transform(generated)), ("UMAP1 (real)", "UMAP2 (real)")


def _palette(count: int) -> list:
    """``count`` distinct colours, never grey (kept for unlabelled real cells); they repeat past 18."""
    name, greys = ("tab10", {7}) if count <= 9 else ("tab20", {14, 15})
    colours = [colour for index, colour in enumerate(plt.get_cmap(name).colors) if index not in greys]
    return [colours[index % len(colours)] for index in range(count)]


def _draw_by_type(axis: plt.Axes, xy: np.ndarray, labels: np.ndarray | None, colours: dict, symbol: str,
                  unlabelled_colour: str, size: float, alpha: float) -> None:
    """Cells coloured by their label, or all in ``unlabelled_colour`` without labels."""
    width = {"linewidths": 0.8} if symbol == "x" else {}
    if labels is None:
        axis.scatter(xy[:, 0], xy[:, 1], s=size, alpha=alpha, marker=symbol, color=unlabelled_colour, **width)
        return
    for cell_type in sorted(set(labels)):
        chosen = labels == cell_type
        axis.scatter(xy[chosen, 0], xy[chosen, 1], s=size, alpha=alpha, marker=symbol, color=colours[cell_type], **width)


def save_gene_moment_plot(real, generated, path: str | Path, title: str = "", overwrite: bool = False) -> Path:
    """Per-gene mean and per-gene variance, real (x) against generated (y), one dot per gene; writes a PNG.

    Each panel has the identity line (a perfect generator's genes lie on it) and the Pearson r
    across genes in its title (``n/a`` when one side is constant). Written atomically; refuses to
    replace ``path`` unless ``overwrite``.
    """
    real, generated = as_cell_pair(real, generated)
    (real_mean, real_var), (generated_mean, generated_var) = gene_moments(real), gene_moments(generated)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained")
    for axis, name, x, y in ((axes[0], "mean", real_mean, generated_mean), (axes[1], "variance", real_var, generated_var)):
        axis.scatter(x, y, s=5, alpha=0.5, color="tab:blue")
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        axis.plot([low, high], [low, high], color="black", linewidth=0.8, label="identity")
        defined = np.ptp(x) > 0 and np.ptp(y) > 0
        r_text = f"{stats.pearsonr(x, y)[0]:.3f}" if defined else "n/a"
        axis.set_title(f"per-gene {name}: Pearson r = {r_text}", fontsize=10)
        axis.set_xlabel(f"real {name}")
        axis.set_ylabel(f"generated {name}")
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title or f"{real.shape[1]} genes; {len(real)} real, {len(generated)} generated cells")
    return save_png(figure, path, overwrite)

