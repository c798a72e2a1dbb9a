"""Gene-gene graph files for ``pathway_gnn`` (``network.adjacency``): reading ``.npz`` matrices and edge lists
(indices or gene names), building a co-expression graph, saving one. See ``cdm4mi.models.bio`` for the format."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from cdm4mi.atomic import atomic_output
from cdm4mi.data.expression_files import table_delimiter
from cdm4mi.extras import require

if TYPE_CHECKING:
    import pandas as pd

_CORRELATION_BLOCK_BYTES = 2**28  # one [genes_per_block, G] float64 block of correlations at a time


def load_adjacency(path: str | Path, num_genes: int, genes_file: str | Path | None = None) -> sparse.csr_matrix:
    """The graph file ``path`` (module docstring) as a symmetric non-negative float64 [num_genes, num_genes]
    CSR matrix. Errors name ``network.adjacency`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"network.adjacency: {path} does not exist")
    if path.suffix.lower() == ".npz":
        matrix = _read_npz(path)
    else:
        delimiter = table_delimiter(path, "network.adjacency", "use .npz (scipy sparse) or an edge list")
        matrix = _read_edge_list(path, delimiter, num_genes, genes_file)
    if matrix.shape != (num_genes, num_genes):
        raise ValueError(f"network.adjacency: {path} is a {matrix.shape[0]} x {matrix.shape[1]} matrix, "
                         f"but network.dim is {num_genes} genes")
    if not np.isfinite(matrix.data).all() or (matrix.data < 0).any():
        raise ValueError(f"network.adjacency: {path} has negative or non-finite weights; weights must be >= 0")
    return matrix.maximum(matrix.T).tocsr()


def _read_npz(path: Path) -> sparse.csr_matrix:
    try:
        matrix = sparse.load_npz(path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"network.adjacency: {path} is not a scipy sparse .npz file ({error})") from None
    return sparse.csr_matrix(matrix, dtype=np.float64)


def _read_edge_list(path: Path, delimiter: str, num_genes: int, genes_file: str | Path | None) -> sparse.csr_matrix:
    pd = require("pandas", f"network.adjacency: {path} (an edge list; a .npz matrix needs no pandas)")
    try:
        edges = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"network.adjacency: {path}: cannot read the edge list ({str(error).strip()})") from None
    columns = list(edges.columns)
    if columns not in (["gene_a", "gene_b"], ["gene_a", "gene_b", "weight"]):
        raise ValueError(f"network.adjacency: {path}: the header must be 'gene_a,gene_b' or 'gene_a,gene_b,weight', "
                         f"got {columns}")
    if genes_file is None:
        rows, cols = (_gene_indices(edges[key], path, num_genes) for key in ("gene_a", "gene_b"))
    else:
        positions = _gene_positions(genes_file)
        rows, cols = (_named_genes(edges[key], path, positions, genes_file) for key in ("gene_a", "gene_b"))
    weights = np.ones(len(edges))
    if "weight" in edges:
        weights = pd.to_numeric(edges["weight"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(weights))
        if len(bad):
            raise ValueError(f"network.adjacency: {path}: edge {bad[0] + 1} has weight {edges['weight'].iloc[bad[0]]!r}, "
                             "not a number")
    size = num_genes if genes_file is None else len(positions)
    return sparse.coo_matrix((weights, (rows, cols)), shape=(size, size)).tocsr()


def _gene_indices(column: pd.Series, path: Path, num_genes: int) -> np.ndarray:
    import pandas as pd  # _read_edge_list required it

    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(numbers) | (numbers != np.round(numbers)) | (numbers < 0) | (numbers >= num_genes))
    if len(bad):
        raise ValueError(f"network.adjacency: {path}: edge {bad[0] + 1} names gene {column.iloc[bad[0]]!r}; without "
                         f"network.genes_file genes are 0-based indices below network.dim ({num_genes})")
    return numbers.astype(np.int64)


def _gene_positions(genes_file: str | Path) -> dict[str, int]:
    path = Path(genes_file)
    if not path.is_file():
        raise ValueError(f"network.genes_file: {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    positions = {name: index for index, name in enumerate(names)}
    if len(positions) != len(names):
        raise ValueError(f"network.genes_file: {path} lists a gene name twice")
    return positions


def _named_genes(column: pd.Series, path: Path, positions: dict[str, int], genes_file: str | Path) -> np.ndarray:
    unknown = [name for name in column if name not in positions]
    if unknown:
        raise ValueError(f"network.adjacency: {path}: gene {unknown[0]!r} is not in network.genes_file {genes_file}")
    return np.array([positions[name] for name in column], dtype=np.int64)


def coexpression_adjacency(matrix: np.ndarray | sparse.spmatrix, top_k: int = 10,
                           min_abs_corr: float = 0.3) -> sparse.csr_matrix:
    """A co-expression graph over the genes of ``matrix`` [cells, genes] (e.g. log-normalized expression).

    Each gene is linked to its ``top_k`` partners of largest absolute Pearson correlation across cells,
    keeping only ``|r| >= min_abs_corr``; an edge chosen by either end is kept, weighted ``|r|``. Genes
    that never vary have no edges. Returns a symmetric float32 CSR [genes, genes] with an empty diagonal.
    Correlations are computed a block of genes at a time, so 20,000 genes need no [G, G] dense matrix.
    """
    if top_k < 1:
        raise ValueError(f"top_k: must be >= 1, got {top_k}")
    if not 0.0 <= min_abs_corr <= 1.0:
        raise ValueError(f"min_abs_corr: must lie in [0, 1], got {min_abs_corr}")
    values = sparse.csc_matrix(matrix, dtype=np.float64) if sparse.issparse(matrix) else np.asarray(matrix, np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"matrix: expected [cells, genes] with at least 2 cells, got shape {values.shape}")
    cells, genes = values.shape
    if genes < 2:
        return sparse.csr_matrix((genes, genes), dtype=np.float32)
    mean = np.asarray(values.mean(axis=0)).ravel()
    squares = values.multiply(values) if sparse.issparse(values) else values**2
    std = np.sqrt(np.maximum(np.asarray(squares.mean(axis=0)).ravel() - mean**2, 0.0))
    varies = std > 1e-12 * np.maximum(np.abs(mean), 1.0)
    inverse_std = np.where(varies, 1.0 / np.where(varies, std, 1.0), 0.0)
    block = max(1, _CORRELATION_BLOCK_BYTES // (8 * genes))
    rows, cols, weights = [], [], []
    keep = min(top_k, genes - 1)
    for start in range(0, genes, block):
        stop = min(start + block, genes)
        cross = values[:, start:stop].T @ values
        cross = cross.toarray() if sparse.issparse(cross) else cross
        corr = (cross / cells - np.outer(mean[start:stop], mean)) * np.outer(inverse_std[start:stop], inverse_std)
        strength = np.abs(corr)
        strength[np.arange(stop - start), np.arange(start, stop)] = 0.0
        partners = np.argpartition(-strength, keep - 1, axis=1)[:, :keep]
        chosen = np.take_along_axis(strength, partners, axis=1)
        row_index, slot = np.nonzero((chosen >= min_abs_corr) & (chosen > 0))
        rows.append(start + row_index)
        cols.append(partners[row_index, slot])
        weights.append(np.minimum(chosen[row_index, slot], 1.0))
    if not rows:
        return sparse.csr_matrix((genes, genes), dtype=np.float32)
    graph = sparse.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(genes, genes)).tocsr()
    return graph.maximum(graph.T).astype(np.float32).tocsr()


def save_adjacency(path: str | Path, adjacency: sparse.spmatrix, overwrite: bool = False) -> Path:
    """Write ``adjacency`` [G, G] as a scipy ``.npz`` that ``network.adjacency`` reads; returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path: {path} must end in .npz")
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency: must be a square [genes, genes] matrix, got shape {adjacency.shape}")
    with atomic_output(path, overwrite) as target:
        sparse.save_npz(target, sparse.csr_matrix(adjacency))
    return path
