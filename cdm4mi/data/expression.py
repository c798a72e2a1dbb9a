"""Gene expression data sets: ``anndata`` (an ``.h5ad`` file) and ``expression_table`` (CSV / TSV).

Every split reads the whole file and applies the same steps, with statistics fitted on the train split:

1. read cells x genes into a scipy CSR matrix (float32), kept sparse throughout;
2. ``num_cells``: a random subsample of cells (``seed``), for quick runs and tests;
3. ``counts`` (raw counts, the default): ``normalize_total`` scales each cell's counts to sum to it
   (library-size normalization), then ``log1p`` takes ``log(1 + x)``. ``counts: false`` means the
   matrix is already log-normalized (e.g. scanpy's ``adata.raw.X``) and is used as it is;
4. cells are split into train / val / test (``val_fraction``, ``test_fraction``, ``seed``), within each
   label separately when there are labels, so every split keeps the cell-type proportions;
5. genes: the explicit list ``genes`` (in that order), or the ``highly_variable_genes`` most variable
   genes of the train split (``normalized_dispersion``), or all genes;
6. ``scale``: each gene is standardized with the train split's mean and std (population std, floored
   at ``STD_FLOOR``; a gene that never varies stays 0), then clipped to ``[-max_value, max_value]``.
   Scaling and clipping are applied when an item is read, so the stored matrix stays sparse.

Items are ``{"x0": float32 [G]}`` plus ``"cond": {"label": int64}`` when cells have labels (``label_key``
or ``labels``); class indices follow the sorted label names (``class_names``). ``preprocessing_state()``
(plain JSON types) travels with a checkpoint: ``inverse_transform`` maps generated samples back to
log-normalized expression and ``samples_to_anndata`` wraps them with their gene names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch.utils.data import Dataset

from cdm4mi.cohort.splits import SPLITS, split_cells
from cdm4mi.data.expression_files import ExpressionMatrix, read_h5ad, read_table
from cdm4mi.data.registry import DATASETS
from cdm4mi.extras import require

STD_FLOOR = 1e-2  # log-normalized expression: a std below 0.01 (about 1 %) is measurement noise
HVG_BINS = 20  # mean-expression bins of the Seurat dispersion normalization


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing options (module docstring); checked on creation, errors name ``data.<key>``."""

    counts: bool = True
    normalize_total: float | None = 1e4
    log1p: bool = True
    highly_variable_genes: int | None = None
    genes: list[str] | None = None
    scale: bool = True
    max_value: float | None = None

    def __post_init__(self) -> None:
        if self.normalize_total is not None and not self.normalize_total > 0:
            raise ValueError(f"data.normalize_total: must be > 0 (or null: no normalization), got {self.normalize_total}")
        if self.highly_variable_genes is not None and self.highly_variable_genes < 1:
            raise ValueError(f"data.highly_variable_genes: must be >= 1, got {self.highly_variable_genes}")
        if self.max_value is not None and not self.max_value > 0:
            raise ValueError(f"data.max_value: must be > 0 (or null: no clipping), got {self.max_value}")
        if self.genes is not None:
            if not self.genes:
                raise ValueError("data.genes: is empty; list the genes to keep, or leave it null")
            if len(set(self.genes)) != len(self.genes):
                raise ValueError("data.genes: lists a gene twice")
            if self.highly_variable_genes is not None:
                raise ValueError("data.genes: give either genes or highly_variable_genes, not both")

    @property
    def logged(self) -> bool:
        """Whether the preprocessed values are log expression (what dispersion and inversion assume)."""
        return self.log1p or not self.counts


@DATASETS.register("anndata")
def anndata_dataset(
    split: str,
    path: str,
    layer: str | None = None,
    label_key: str | None = None,
    counts: bool = True,
    normalize_total: float | None = 1e4,
    log1p: bool = True,
    highly_variable_genes: int | None = None,
    genes: list[str] | None = None,
    scale: bool = True,
    max_value: float | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    num_cells: int | None = None,
) -> ExpressionDataset:
    """The cells of ``split`` of an ``.h5ad`` file (module docstring for the preprocessing options).

    Args:
        layer: None for ``adata.X``, ``'raw'`` for ``adata.raw.X`` (with ``adata.raw``'s genes), or the
            name of one of ``adata.layers``.
        label_key: the ``adata.obs`` column holding each cell's class (cell type, tissue); None: unlabeled.
    """
    preprocessing = Preprocessing(counts, normalize_total, log1p, highly_variable_genes, genes, scale, max_value)
    return ExpressionDataset(read_h5ad(path, layer, label_key), split, preprocessing, val_fraction, test_fraction,
                             seed, num_cells)


@DATASETS.register("expression_table")
def expression_table(
    split: str,
    path: str,
    transpose: bool = False,
    labels: str | None = None,
    counts: bool = True,
    normalize_total: float | None = 1e4,
    log1p: bool = True,
    highly_variable_genes: int | None = None,
    genes: list[str] | None = None,
    scale: bool = True,
    max_value: float | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    num_cells: int | None = None,
) -> ExpressionDataset:
    """The cells of ``split`` of a CSV / TSV table (module docstring for the preprocessing options).

    Args:
        path: ``.csv`` (comma) or ``.tsv`` / ``.txt`` (tab), optionally ``.gz``. A header row, then one row
            per cell: its id, then one value per gene (the header names the genes). The whole table is
            read into memory once (dense); store large data sets as ``.h5ad``.
        transpose: the table is genes x cells instead (header: cell ids; first column: gene names).
        labels: a column of the table (cells x genes only) holding each cell's class, or a second
            CSV / TSV with a header row and two columns: cell id, label.
    """
    preprocessing = Preprocessing(counts, normalize_total, log1p, highly_variable_genes, genes, scale, max_value)
    return ExpressionDataset(read_table(path, transpose, labels), split, preprocessing, val_fraction, test_fraction,
                             seed, num_cells)


class ExpressionDataset(Dataset):
    """One split of an expression matrix, preprocessed (module docstring).

    Attributes: ``expression`` (scipy CSR [cells, genes] float32: this split's log-normalized expression
    of the selected genes, before scaling), ``gene_names``, ``num_genes``, ``cell_ids``, ``labels`` (int64
    [cells] or None), ``class_names``, ``num_classes`` (0 without labels), ``mean`` / ``std`` (float32 [G],
    or None without scaling).
    """

    def __init__(self, data: ExpressionMatrix, split: str, preprocessing: Preprocessing, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_cells: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split: unknown '{split}'; choose one of {list(SPLITS)}")
        for option, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"data.{option}: must lie in [0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + test_fraction: must be < 1 to leave cells for training, "
                             f"got {val_fraction} + {test_fraction}")
        self.source, self.preprocessing = data.source, preprocessing
        values, cell_ids, labels = _subsample(data, num_cells, seed)
        values = normalize(values, preprocessing, data.source)
        self.class_names: list[str] = [] if labels is None else sorted(set(labels.tolist()))
        codes = None if labels is None else np.searchsorted(self.class_names, labels).astype(np.int64)
        cells = split_cells(len(cell_ids), codes, val_fraction, test_fraction, seed)
        if len(cells[split]) == 0:
            raise ValueError(f"data.{split}_fraction: split '{split}' of {data.source} has no cells "
                             f"({len(cell_ids)} cells in all)")
        train = values[cells["train"]]
        gene_index = select_genes(train, data.gene_names, preprocessing, data.source)
        self.gene_names = [data.gene_names[g] for g in gene_index]
        train = train[:, gene_index]
        self.mean = self.std = None
        if preprocessing.scale:
            self.mean, self.std = gene_mean_std(train)
        self.nonnegative = bool(train.data.min(initial=0.0) >= 0)
        self.expression = sparse.csr_matrix(values[cells[split]][:, gene_index])
        self.cell_ids = [cell_ids[i] for i in cells[split]]
        self.labels = None if codes is None else codes[cells[split]]

    @property
    def num_genes(self) -> int:
        return len(self.gene_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.expression.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, stop = self.expression.indptr[index], self.expression.indptr[index + 1]
        row = np.zeros(self.num_genes, dtype=np.float32)
        row[self.expression.indices[start:stop]] = self.expression.data[start:stop]
        if self.mean is not None:
            row = (row - self.mean) / self.std
        if self.preprocessing.max_value is not None:
            np.clip(row, -self.preprocessing.max_value, self.preprocessing.max_value, out=row)
        item: dict[str, Any] = {"x0": torch.from_numpy(row)}
        if self.labels is not None:
            item["cond"] = {"label": torch.tensor(self.labels[index], dtype=torch.int64)}
        return item

    def preprocessing_state(self) -> dict[str, Any]:
        """What maps model samples back to genes, in plain JSON types (store it with the checkpoint)."""
        options = self.preprocessing
        return {
            "source": self.source.name,
            "genes": list(self.gene_names),
            "counts": options.counts,
            "normalize_total": options.normalize_total if options.counts else None,
            "log1p": options.log1p if options.counts else False,
            "scale": options.scale,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
            "max_value": options.max_value,
            "nonnegative": self.nonnegative,
            "class_names": list(self.class_names),
        }


def inverse_transform(samples: torch.Tensor | np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """Model-unit ``samples`` [N, G] -> log-normalized expression [N, G] (float64) of ``state['genes']``.

    Undoes the scaling (``x * std + mean``); when the training expression was non-negative (counts after
    log1p always are), values below zero are set to zero, the least expression a cell can have.
    """
    missing = sorted({"genes", "scale", "mean", "std", "nonnegative"} - set(state))
    if missing:
        raise ValueError(f"state: not a preprocessing_state() (missing {missing})")
    values = samples.detach().cpu().double().numpy() if torch.is_tensor(samples) else np.asarray(samples, np.float64)
    genes = len(state["genes"])
    if values.ndim != 2 or values.shape[1] != genes:
        raise ValueError(f"samples: expected [N, {genes}] (one value per gene of the preprocessing state), "
                         f"got {values.shape}")
    if state["scale"]:
        values = values * np.asarray(state["std"], np.float64) + np.asarray(state["mean"], np.float64)
    if state["nonnegative"]:
        values = np.maximum(values, 0.0)
    return values


def samples_to_anndata(samples: torch.Tensor | np.ndarray, state: dict[str, Any],
                       labels: torch.Tensor | np.ndarray | list | None = None):
    """Generated cells as an ``anndata.AnnData``: X = ``inverse_transform`` (float32), var_names = genes,
    ``obs['cell_type']`` = the class names of ``labels`` (class indices or names) when given, and the
    preprocessing state as JSON in ``uns['cdm4mi_preprocessing']``."""
    anndata = require("anndata", ".h5ad output (generated cells)")
    import pandas as pd  # anndata's own dependency

    expression = inverse_transform(samples, state).astype(np.float32)
    obs = pd.DataFrame(index=[f"generated_{i}" for i in range(expression.shape[0])])
    if labels is not None:
        obs["cell_type"] = pd.Categorical(_label_names(labels, state["class_names"], len(obs)),
                                          categories=state["class_names"])
    adata = anndata.AnnData(X=expression, obs=obs, var=pd.DataFrame(index=pd.Index(state["genes"], dtype=str)))
    adata.uns["cdm4mi_preprocessing"] = json.dumps(state)
    return adata


def _label_names(labels: torch.Tensor | np.ndarray | list, class_names: list[str], count: int) -> list[str]:
    values = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if values.shape != (count,):
        raise ValueError(f"labels: expected one label per sample ({count}), got shape {values.shape}")
    if values.dtype.kind in "iu":
        if len(values) and (values.min() < 0 or values.max() >= len(class_names)):
            raise ValueError(f"labels: class indices must lie in [0, {len(class_names) - 1}]")
        return [class_names[i] for i in values]
    unknown = sorted(set(values.astype(str)) - set(class_names))
    if unknown:
        raise ValueError(f"labels: {unknown[:3]} are not among the class names {class_names}")
    return values.astype(str).tolist()


def normalize(values: sparse.csr_matrix, preprocessing: Preprocessing, source: Path) -> sparse.csr_matrix:
    """Counts [cells, genes] -> ``log1p(counts / total * normalize_total)`` (steps as configured), still CSR.

    A cell with no counts stays all zero. ``counts: false`` returns ``values`` unchanged.
    """
    if not np.isfinite(values.data).all():
        raise ValueError(f"data.path: {source} holds non-finite values (NaN or inf)")
    if not preprocessing.counts:
        return values
    if values.data.min(initial=0.0) < 0:
        raise ValueError(f"data.counts: {source} holds negative values (min {values.data.min():.3g}), so it is "
                         "not a count matrix; set data.counts: false for log-normalized data (or pick data.layer)")
    values = values.copy()
    if preprocessing.normalize_total is not None:
        totals = np.asarray(values.sum(axis=1, dtype=np.float64)).ravel()
        factors = np.divide(preprocessing.normalize_total, totals, out=np.zeros_like(totals), where=totals > 0)
        values.data = (values.data * np.repeat(factors, np.diff(values.indptr))).astype(np.float32)
    if preprocessing.log1p:
        values.data = np.log1p(values.data)
    return values


def select_genes(train: sparse.csr_matrix, gene_names: list[str], preprocessing: Preprocessing,
                 source: Path) -> np.ndarray:
    """Indices of the genes to keep: ``genes`` in their order, else the top ``highly_variable_genes`` by
    normalized dispersion on ``train`` (in file order), else all."""
    if preprocessing.genes is not None:
        positions = {name: index for index, name in enumerate(gene_names)}
        missing = [name for name in preprocessing.genes if name not in positions]
        if missing:
            raise ValueError(f"data.genes: {len(missing)} not in {source}, e.g. {missing[:3]}")
        return np.array([positions[name] for name in preprocessing.genes], dtype=np.int64)
    count = preprocessing.highly_variable_genes
    if count is None:
        return np.arange(len(gene_names))
    if count > len(gene_names):
        raise ValueError(f"data.highly_variable_genes: {count} is more than the {len(gene_names)} genes of {source}")
    dispersion = normalized_dispersion(train, preprocessing.logged)
    order = np.argsort(-np.nan_to_num(dispersion, nan=-np.inf), kind="stable")
    return np.sort(order[:count])


def normalized_dispersion(values: sparse.csr_matrix, logged: bool = True) -> np.ndarray:
    """Seurat-flavour normalized dispersion of each gene of ``values`` [cells, genes] (Satija et al. 2015;
    scanpy's ``highly_variable_genes(flavor='seurat')``): NaN for genes that never vary.

    On linear expression (``expm1`` of ``values`` when ``logged``): dispersion ``var / mean`` (unbiased
    variance), taken as ``log``; genes are put into ``HVG_BINS`` equal-width bins of ``log1p(mean)``, and a
    gene's log dispersion is z-scored against the mean and std of its bin (a bin holding one gene gives 1).
    """
    import pandas as pd  # reading the expression file required it (cdm4mi.data.expression_files)

    linear = sparse.csr_matrix(values, dtype=np.float64, copy=True)
    if logged:
        linear.data = np.expm1(linear.data)
    cells = linear.shape[0]
    if cells < 2:
        raise ValueError("data.highly_variable_genes: needs at least 2 training cells")
    mean = np.asarray(linear.mean(axis=0)).ravel()
    mean_square = np.asarray(linear.multiply(linear).mean(axis=0)).ravel()
    variance = (mean_square - mean**2) * cells / (cells - 1)
    mean[mean == 0] = 1e-12
    dispersion = variance / mean
    dispersion[dispersion <= 0] = np.nan
    log_dispersion, log_mean = np.log(dispersion), np.log1p(mean)
    edges = np.linspace(log_mean.min(), log_mean.max(), HVG_BINS + 1)
    bins = np.searchsorted(edges[1:-1], log_mean, side="left")  # right-closed bins, as pandas.cut
    frame = pd.DataFrame({"bin": bins, "dispersion": log_dispersion})
    grouped = frame.groupby("bin")["dispersion"]
    bin_mean, bin_std = grouped.mean().reindex(range(HVG_BINS)).to_numpy(), grouped.std().reindex(range(HVG_BINS)).to_numpy()
    single = np.isnan(bin_std)  # one gene in the bin: its dispersion counts as 1 std above a mean of 0
    bin_std[single], bin_mean[single] = bin_mean[single], 0.0
    return (log_dispersion - bin_mean[bins]) / bin_std[bins]


def gene_mean_std(values: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and population std of ``values`` [cells, genes] (std floored at ``STD_FLOOR``), float32."""
    mean = np.asarray(values.mean(axis=0, dtype=np.float64)).ravel()
    mean_square = np.asarray(values.multiply(values).mean(axis=0, dtype=np.float64)).ravel()
    std = np.sqrt(np.maximum(mean_square - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)


def _subsample(data: ExpressionMatrix, num_cells: int | None, seed: int):
    """``num_cells`` random cells (all when None or more than there are), in file order."""
    if num_cells is not None and num_cells < 1:
        raise ValueError(f"data.num_cells: must be >= 1, got {num_cells}")
    if num_cells is None or num_cells >= len(data.cell_ids):
        return data.values, data.cell_ids, data.labels
    chosen = np.sort(np.random.default_rng([seed, 0]).choice(len(data.cell_ids), num_cells, replace=False))
    labels = None if data.labels is None else data.labels[chosen]
    return data.values[chosen], [data.cell_ids[i] for i in chosen], labels
