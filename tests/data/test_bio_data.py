"""Gene expression data sets: scanpy's pbmc68k_reduced (700 cells x 765 genes, 10 cell types) and
count tables written here, checked against closed forms, scanpy itself and round trips."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from cdm4mi.data.expression import STD_FLOOR, inverse_transform, samples_to_anndata
from cdm4mi.data.expression_files import read_h5ad
from cdm4mi.data.registry import build_dataset

PBMC_OPTIONS = {"layer": "raw", "label_key": "bulk_labels", "counts": False}
# pbmc68k_reduced was written by an old anndata, which says so on every read.
pytestmark = pytest.mark.filterwarnings("ignore:.*(very old version|without encoding metadata|Moving element)")


def pbmc_path() -> str:
    spec = importlib.util.find_spec("scanpy")
    if spec is None:
        pytest.skip("scanpy (which ships the pbmc68k_reduced test file) is not installed")
    return spec.submodule_search_locations[0] + "/datasets/10x_pbmc68k_reduced.h5ad"


@pytest.fixture(scope="module")
def pbmc():
    """The file's log-normalized matrix, labels and cell ids, and its three splits."""
    path = pbmc_path()
    raw = read_h5ad(path, "raw", "bulk_labels")
    splits = {split: build_dataset("anndata", split, path=path, **PBMC_OPTIONS) for split in ("train", "val", "test")}
    return {"path": path, "raw": raw, "splits": splits}


def stacked(dataset) -> tuple[np.ndarray, np.ndarray | None]:
    items = [dataset[i] for i in range(len(dataset))]
    x0 = torch.stack([item["x0"] for item in items]).numpy()
    labels = torch.stack([item["cond"]["label"] for item in items]).numpy() if "cond" in items[0] else None
    return x0, labels


def test_pbmc_splits_are_disjoint_stratified_and_deterministic(pbmc):
    raw, splits = pbmc["raw"], pbmc["splits"]
    train = splits["train"]
    assert (train.num_genes, train.num_classes) == (765, 10)
    assert train.gene_names == raw.gene_names and train.class_names == sorted(set(raw.labels))
    cells = {split: set(dataset.cell_ids) for split, dataset in splits.items()}
    assert sum(len(c) for c in cells.values()) == 700 and set.union(*cells.values()) == set(raw.cell_ids)
    # Within each cell type, round(n * 0.1) cells go to test and to val: e.g. 240 Dendritic -> 24, 8 naive T -> 1.
    counts = pd.Series(raw.labels).value_counts()
    for split in ("val", "test"):
        per_class = pd.Series(splits[split].labels).map(dict(enumerate(train.class_names))).value_counts()
        expected = {name: int(n * 0.1 + 0.5) for name, n in counts.items()}
        assert per_class.reindex(list(expected), fill_value=0).to_dict() == expected
    # Items carry the file's label of their cell.
    label_of = dict(zip(raw.cell_ids, raw.labels, strict=True))
    x0, labels = stacked(splits["test"])
    assert x0.shape == (len(splits["test"]), 765) and x0.dtype == np.float32
    assert [train.class_names[k] for k in labels] == [label_of[c] for c in splits["test"].cell_ids]
    again = build_dataset("anndata", "val", path=pbmc["path"], **PBMC_OPTIONS)
    assert again.cell_ids == splits["val"].cell_ids
    other = build_dataset("anndata", "val", path=pbmc["path"], **PBMC_OPTIONS, seed=1)
    assert other.cell_ids != splits["val"].cell_ids


def test_scaling_uses_train_statistics(pbmc):
    train, val = pbmc["splits"]["train"], pbmc["splits"]["val"]
    x0, _ = stacked(train)
    dense = train.expression.toarray()
    varying = dense.std(axis=0) > STD_FLOOR
    assert varying.sum() > 700
    np.testing.assert_allclose(x0.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x0[:, varying].std(axis=0), 1.0, atol=1e-4)
    # Val items are standardized with the train mean / std, not their own.
    np.testing.assert_array_equal(val.mean, train.mean)
    x_val, _ = stacked(val)
    np.testing.assert_allclose(x_val, (val.expression.toarray() - train.mean) / train.std, atol=1e-6)
    assert abs(x_val.mean(axis=0)).max() > 0.05


def test_highly_variable_genes_match_scanpy_seurat_flavour(pbmc):
    sc = pytest.importorskip("scanpy")
    import anndata

    train = build_dataset("anndata", "train", path=pbmc["path"], **PBMC_OPTIONS, highly_variable_genes=150)
    assert train.num_genes == 150 and train.expression.shape == (len(train), 150)
    raw = pbmc["raw"]
    rows = [raw.cell_ids.index(cell) for cell in train.cell_ids]
    reference = sc.pp.highly_variable_genes(anndata.AnnData(raw.values[rows]), flavor="seurat", n_top_genes=150,
                                            inplace=False)
    chosen = [raw.gene_names[g] for g in np.flatnonzero(reference["highly_variable"].to_numpy())]
    assert train.gene_names == chosen  # same genes, in file order
    # The columns are those genes' values.
    columns = [raw.gene_names.index(gene) for gene in chosen]
    np.testing.assert_array_equal(train.expression.toarray(), raw.values[rows][:, columns].toarray())


def test_inverse_transform_and_anndata_round_trip(pbmc, tmp_path):
    train = pbmc["splits"]["test"]
    state = json.loads(json.dumps(pbmc["splits"]["train"].preprocessing_state()))  # plain JSON types only
    assert state["genes"] == train.gene_names and state["source"] == "10x_pbmc68k_reduced.h5ad"
    x0, labels = stacked(train)
    expression = inverse_transform(torch.from_numpy(x0), state)
    raw = pbmc["raw"]
    rows = [raw.cell_ids.index(cell) for cell in train.cell_ids]
    np.testing.assert_allclose(expression, raw.values[rows].toarray(), atol=1e-5)
    adata = samples_to_anndata(torch.from_numpy(x0), state, labels=torch.from_numpy(labels))
    assert list(adata.var_names) == train.gene_names and adata.shape == (len(train), 765)
    assert list(adata.obs["cell_type"]) == [train.class_names[k] for k in labels]
    adata.write_h5ad(tmp_path / "generated.h5ad")
    np.testing.assert_allclose(read_h5ad(tmp_path / "generated.h5ad").values.toarray(), expression, atol=1e-5)
    # Negative log expression does not exist: it comes back as 0.
    assert inverse_transform(np.full((1, 765), -50.0), state).max() == 0.0
    with pytest.raises(ValueError, match=r"samples: expected \[N, 765\]"):
        inverse_transform(np.zeros((2, 764)), state)


def test_max_value_clips_scaled_items(pbmc):
    clipped = build_dataset("anndata", "train", path=pbmc["path"], **PBMC_OPTIONS, max_value=2.5)
    x0, _ = stacked(clipped)
    unclipped, _ = stacked(pbmc["splits"]["train"])
    assert x0.max() == 2.5 and x0.min() >= -2.5 and unclipped.max() > 2.5
    np.testing.assert_array_equal(x0, np.clip(unclipped, -2.5, 2.5))


def negative_binomial_counts(cells: int = 120, genes: int = 30, seed: int = 0) -> np.ndarray:
    """Sparse-ish UMI counts: each gene's mean from 0.05 to 20, each cell's depth from 0.5x to 2x."""
    rng = np.random.default_rng(seed)
    means = np.exp(rng.uniform(np.log(0.05), np.log(20), genes)) * rng.uniform(0.5, 2.0, cells)[:, None]
    return rng.negative_binomial(2, 2 / (2 + means)).astype(np.float64)


def write_counts(path: Path, counts: np.ndarray, transpose: bool = False, label_column: list[str] | None = None) -> None:
    cells = [f"cell{i}" for i in range(counts.shape[0])]
    genes = [f"G{j}" for j in range(counts.shape[1])]
    frame = pd.DataFrame(counts.astype(int), index=cells, columns=genes)
    if transpose:
        frame = frame.T
    if label_column is not None:
        frame["cell_type"] = label_column
    frame.to_csv(path, sep="," if ".csv" in path.name else "\t", index_label="id")


def test_count_table_normalize_total_and_log1p_match_the_formula(tmp_path):
    counts = negative_binomial_counts()
    counts[5] = 0  # an empty cell stays empty instead of dividing by zero
    write_counts(tmp_path / "counts.csv", counts)
    dataset = build_dataset("expression_table", "train", path=str(tmp_path / "counts.csv"), scale=False,
                            val_fraction=0.2, test_fraction=0.0)
    assert isinstance(dataset.expression, sparse.csr_matrix)
    assert dataset.expression.nnz == np.count_nonzero(counts[[int(c[4:]) for c in dataset.cell_ids]])
    rows = [int(cell[4:]) for cell in dataset.cell_ids]
    totals = counts.sum(axis=1, keepdims=True)
    expected = np.log1p(np.divide(counts * 1e4, totals, out=np.zeros_like(counts), where=totals > 0))[rows]
    np.testing.assert_allclose(dataset.expression.toarray(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked(dataset)[0], expected, rtol=1e-6, atol=1e-6)  # items: dense rows
    assert len(dataset) == 96 and dataset.num_classes == 0 and "cond" not in dataset[0]
    # num_cells: the same random 50 cells for every split, split 40 / 10.
    subsets = [build_dataset("expression_table", split, path=str(tmp_path / "counts.csv"), num_cells=50,
                             val_fraction=0.2, test_fraction=0.0) for split in ("train", "val")]
    assert [len(subset) for subset in subsets] == [40, 10]
    assert not set(subsets[0].cell_ids) & set(subsets[1].cell_ids)
    # Only log1p, and the genes option: those columns in that order.
    logged = build_dataset("expression_table", "val", path=str(tmp_path / "counts.csv"), scale=False,
                           normalize_total=None, genes=["G7", "G2"], val_fraction=0.2, test_fraction=0.0)
    rows = [int(cell[4:]) for cell in logged.cell_ids]
    assert logged.gene_names == ["G7", "G2"]
    np.testing.assert_allclose(logged.expression.toarray(), np.log1p(counts[rows][:, [7, 2]]), rtol=1e-6)


def test_transposed_gzipped_table_and_labels_file_give_the_same_data(tmp_path):
    counts = negative_binomial_counts(seed=1)
    kinds = ["B cell" if i % 3 else "T cell" for i in range(len(counts))]
    write_counts(tmp_path / "cells.csv", counts, label_column=kinds)
    write_counts(tmp_path / "genes.tsv.gz", counts, transpose=True)  # pandas gzips by the suffix
    assert gzip.open(tmp_path / "genes.tsv.gz", "rt").readline().startswith("id\tcell0\tcell1")
    pd.DataFrame({"barcode": [f"cell{i}" for i in range(len(counts))][::-1], "type": kinds[::-1]}).to_csv(
        tmp_path / "labels.csv", index=False)
    options = {"highly_variable_genes": 12, "seed": 3}
    by_column = build_dataset("expression_table", "train", path=str(tmp_path / "cells.csv"), labels="cell_type", **options)
    by_file = build_dataset("expression_table", "train", path=str(tmp_path / "genes.tsv.gz"), transpose=True,
                            labels=str(tmp_path / "labels.csv"), **options)
    assert by_file.class_names == ["B cell", "T cell"] and by_file.num_genes == 12
    assert by_file.cell_ids == by_column.cell_ids and by_file.gene_names == by_column.gene_names
    np.testing.assert_array_equal(by_file.labels, [0 if i % 3 else 1 for i in map(lambda c: int(c[4:]), by_file.cell_ids)])
    np.testing.assert_array_equal(stacked(by_file)[0], stacked(by_column)[0])


def bad_table(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_malformed_inputs_name_the_file_or_key(tmp_path, pbmc):
    good = "id,G1,G2,G3\nc1,1,2,3\nc2,4,5,6\nc3,0,1,0\n"
    cases = [
        ({"path": bad_table(tmp_path, "extra.csv", good + "c4,1,2,3,4\n")}, r"data.path: .*extra.csv: not a well-formed"),
        ({"path": bad_table(tmp_path, "short.csv", good + "c4,1,2\n")}, r"short.csv: row 'c4' has no value in column 'G3'"),
        ({"path": bad_table(tmp_path, "word.csv", good + "c4,1,two,3\n")}, r"word.csv: value 'two' in row 'c4', column 'G2'"),
        ({"path": bad_table(tmp_path, "twice.csv", "id,G1,G1\nc1,1,2\n")}, r"twice.csv: gene 'G1' appears twice"),
        ({"path": bad_table(tmp_path, "table.xlsx", good)}, r"data.path: .*table.xlsx: unknown table format"),
        ({"path": str(tmp_path / "absent.csv")}, r"data.path: .*absent.csv does not exist"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "genes": ["G1", "NOPE"]}, r"data.genes: 1 not in .*ok.csv"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "labels": "kind"}, r"data.labels: 'kind' is neither a column of"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "labels": bad_table(tmp_path, "few.csv", "id,kind\nc1,a\nc2,b\n")},
         r"data.labels: .*few.csv: no label for 1 cells .* e.g. 'c3'"),
        ({"path": bad_table(tmp_path, "neg.csv", good.replace("c3,0", "c3,-1"))}, r"data.counts: .*neg.csv holds negative"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "highly_variable_genes": 4}, r"data.highly_variable_genes: 4 is more"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "genes": ["G1"], "highly_variable_genes": 1}, r"data.genes: give either"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "val_fraction": 0.6, "test_fraction": 0.5},
         r"data.val_fraction \+ test_fraction: must be < 1"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "normalize_total": 0}, r"data.normalize_total: must be > 0"),
        ({"path": bad_table(tmp_path, "ok.csv", good), "bogus": 1}, r"data.bogus: unknown option"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            build_dataset("expression_table", "train", **options)
    with pytest.raises(ValueError, match=r"data.label_key: .*10x_pbmc68k_reduced.h5ad has no obs column 'cell_type'"):
        build_dataset("anndata", "train", path=pbmc["path"], layer="raw", counts=False, label_key="cell_type")
    with pytest.raises(ValueError, match=r"data.layer: .* has no layer 'counts'"):
        build_dataset("anndata", "train", path=pbmc["path"], layer="counts")
    # adata.X of this file is already scaled (negative values): not counts.
    with pytest.raises(ValueError, match=r"data.counts: .*10x_pbmc68k_reduced.h5ad holds negative values"):
        build_dataset("anndata", "train", path=pbmc["path"])
