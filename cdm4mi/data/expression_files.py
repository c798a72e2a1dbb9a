"""Reading cells x genes matrices from files: ``.h5ad`` (anndata) and CSV / TSV tables (pandas), as
scipy CSR float32 with gene names, cell ids and optional labels; no preprocessing here. anndata and pandas come with
the ``bio`` extra and are imported when a file is read (``cdm4mi.extras``)."""

from __future__ import annotations

import csv
import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from cdm4mi.extras import require

if TYPE_CHECKING:
    import pandas as pd

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}


@dataclass
class ExpressionMatrix:
    """A cells x genes matrix as read from a file, before any preprocessing."""

    values: sparse.csr_matrix  # [cells, genes] float32
    gene_names: list[str]
    cell_ids: list[str]
    labels: np.ndarray | None  # [cells] label names (str), or None
    source: Path



def read_h5ad(path: str | Path, layer: str | None = None, label_key: str | None = None) -> ExpressionMatrix:
    """The matrix of ``layer`` of an ``.h5ad`` file (``anndata`` options), as CSR float32."""
    anndata = require("anndata", "data.name 'anndata' (.h5ad files)")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.path: {path} does not exist")
    try:
        with warnings.catch_warnings():  # anndata's notes on moving old files' fields are not the user's problem
            warnings.simplefilter("ignore", FutureWarning)
            adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ValueError(f"data.path: {path} cannot be read as .h5ad ({error})") from None
    if layer is None:
        matrix, gene_names = adata.X, adata.var_names
    elif layer == "raw":
        if adata.raw is None:
            raise ValueError(f"data.layer: 'raw', but {path} has no adata.raw")
        matrix, gene_names = adata.raw.X, adata.raw.var_names
    elif layer in adata.layers:
        matrix, gene_names = adata.layers[layer], adata.var_names
    else:
        raise ValueError(f"data.layer: {path} has no layer '{layer}'; choose null (X), 'raw' or one of "
                         f"{list(adata.layers.keys())}")
    labels = None
    if label_key is not None:
        if label_key not in adata.obs:
            raise ValueError(f"data.label_key: {path} has no obs column '{label_key}'; columns: {list(adata.obs.columns)}")
        labels = _label_column(adata.obs[label_key], f"data.label_key: {path} column '{label_key}'")
    values = sparse.csr_matrix(matrix, dtype=np.float32)
    return ExpressionMatrix(values, _unique_names(gene_names, path, "gene"), _unique_names(adata.obs_names, path, "cell"),
                            labels, path)


def read_table(path: str | Path, transpose: bool = False, labels: str | None = None) -> ExpressionMatrix:
    """A CSV / TSV expression table (``expression_table`` options), as CSR float32."""
    pd = require("pandas", "data.name 'expression_table' (CSV / TSV files)")
    path = Path(path)
    delimiter = table_delimiter(path, "data.path", "use a cells x genes table")
    if not path.is_file():
        raise ValueError(f"data.path: {path} does not exist")
    header = _header(path, delimiter)
    try:
        # No index_col: with one, pandas silently drops a row's extra fields instead of refusing the row.
        table = pd.read_csv(path, sep=delimiter, header=0, dtype={header[0]: str}, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"data.path: {path}: not a well-formed table ({str(error).strip()})") from None
    if table.shape[1] != len(header) or table.empty:
        raise ValueError(f"data.path: {path}: the header has {len(header)} fields but the rows have "
                         f"{table.shape[1]} (or there are no rows)")
    row_names = _unique_names(table.iloc[:, 0].astype(str), path, "cell" if not transpose else "gene")
    table = table.iloc[:, 1:]
    table.columns = header[1:]
    label_names = None
    if labels is not None and not transpose and labels in table.columns:
        label_names = _label_column(table.pop(labels), f"data.labels: {path} column '{labels}'")
    values = _numeric(table, path, row_names)
    gene_names, cell_ids = (row_names, header[1:]) if transpose else (list(table.columns), row_names)
    if transpose:
        values = values.T.tocsr()
    _unique_names(gene_names, path, "gene")
    _unique_names(cell_ids, path, "cell")
    if labels is not None and label_names is None:
        label_names = _labels_file(labels, cell_ids, path)
    return ExpressionMatrix(values, gene_names, cell_ids, label_names, path)


def table_delimiter(path: str | Path, option: str, advice: str) -> str:
    """The delimiter of a ``.csv`` / ``.tsv`` / ``.txt`` table (optionally ``.gz``), from its name."""
    name = Path(path).name.lower()
    suffix = Path(name[:-3] if name.endswith(".gz") else name).suffix
    if suffix not in TABLE_DELIMITERS:
        raise ValueError(f"{option}: {path}: unknown table format '{suffix}'; {advice} ending in "
                         f"{', '.join(TABLE_DELIMITERS)} (optionally .gz)")
    return TABLE_DELIMITERS[suffix]


def _header(path: Path, delimiter: str) -> list[str]:
    """The header row as written (pandas renames repeated names, which would hide a repeated gene)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as file:
            header = next(csv.reader(file, delimiter=delimiter), None)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"data.path: {path}: cannot read the header ({error})") from None
    if not header or len(header) < 2:
        raise ValueError(f"data.path: {path}: needs a header row naming an id column and at least one gene / cell")
    return header


def _numeric(table: pd.DataFrame, path: Path, row_names: list[str]) -> sparse.csr_matrix:
    """The table's values as CSR float32; a non-numeric or missing value names its row and column."""
    import pandas as pd  # read_table required it

    for column in table.columns[[not pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes]]:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna() & table[column].notna())
        if not len(bad):
            continue
        bad = bad[0]
        raise ValueError(f"data.path: {path}: value {table[column].iloc[bad]!r} in row '{row_names[bad]}', "
                         f"column '{column}' is not a number")
    values = table.to_numpy(dtype=np.float32)
    missing = np.argwhere(np.isnan(values))
    if len(missing):
        row, column = missing[0]
        raise ValueError(f"data.path: {path}: row '{row_names[row]}' has no value in column '{table.columns[column]}' "
                         "(an empty field, NA, or a row with too few fields)")
    return sparse.csr_matrix(values)


def _labels_file(labels: str, cell_ids: list[str], table_path: Path) -> np.ndarray:
    import pandas as pd  # read_table required it

    path = Path(labels)
    if not path.is_file():
        raise ValueError(f"data.labels: '{labels}' is neither a column of {table_path} nor a file")
    try:
        frame = pd.read_csv(path, sep=table_delimiter(path, "data.labels", "use a cell id, label table"), dtype=str,
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"data.labels: {path}: not a well-formed table ({str(error).strip()})") from None
    if frame.shape[1] != 2:
        raise ValueError(f"data.labels: {path}: needs a header row and two columns (cell id, label), "
                         f"got {frame.shape[1]} columns")
    ids, names = frame.iloc[:, 0], frame.iloc[:, 1]
    if ids.duplicated().any():
        raise ValueError(f"data.labels: {path}: cell '{ids[ids.duplicated()].iloc[0]}' is listed twice")
    by_cell = dict(zip(ids, names, strict=True))
    missing = [cell for cell in cell_ids if not by_cell.get(cell)]
    if missing:
        raise ValueError(f"data.labels: {path}: no label for {len(missing)} cells of {table_path}, e.g. '{missing[0]}'")
    return np.array([by_cell[cell] for cell in cell_ids], dtype=str)


def _label_column(column: pd.Series, where: str) -> np.ndarray:
    missing = column.isna().to_numpy() | (column.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise ValueError(f"{where}: {int(missing.sum())} cells have no label")
    return column.astype(str).to_numpy()


def _unique_names(names, path: Path, kind: str) -> list[str]:
    names = [str(name) for name in names]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"data.path: {path}: {kind} '{name}' appears twice")
        seen.add(name)
    return names
