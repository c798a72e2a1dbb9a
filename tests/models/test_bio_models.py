"""Gene expression backbones (residual_mlp, gene_attention, pathway_gnn): shapes up to 20,000 genes,
cell-type conditioning and its null label, graph locality, adjacency files, and that they learn."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scipy import sparse

from cdm4mi.data.graph_files import coexpression_adjacency, load_adjacency, save_adjacency
from cdm4mi.data.registry import build_dataset
from cdm4mi.diffusion import DiffusionObjective, NoiseSchedule, make_betas
from cdm4mi.models.registry import build_backbone

BACKBONES = ("residual_mlp", "gene_attention", "pathway_gnn")
SMALL = {
    "residual_mlp": {"hidden_dim": 32, "num_blocks": 2, "time_embed_dim": 32},
    "gene_attention": {"hidden_dim": 32, "num_gene_tokens": 16, "num_heads": 2, "num_blocks": 1, "num_mlp_blocks": 1,
                       "time_embed_dim": 32},
    "pathway_gnn": {"hidden_dim": 8, "num_layers": 2, "time_embed_dim": 32},
}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and does not stall when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Random sparse gene graphs (about 5 edges per gene) as .npz files, one per gene count."""
    folder = tmp_path_factory.mktemp("graphs")

    def graph(genes: int) -> str:
        path = folder / f"random_{genes}.npz"
        if not path.exists():
            rng = np.random.default_rng(genes)
            edges = rng.integers(0, genes, (2, 5 * genes))
            save_adjacency(path, sparse.coo_matrix((rng.uniform(0.1, 1, 5 * genes), edges), shape=(genes, genes)))
        return str(path)

    return graph


def make(name: str, genes: int, graphs, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "pathway_gnn":
        options.setdefault("adjacency", graphs(genes))
    return build_backbone(name, dim=genes, **{**SMALL[name], **options})


def randomize_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """Give every zero-initialised parameter random values, as training would: the condition now matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("genes", [765, 20_000])
@pytest.mark.parametrize("name", BACKBONES)
def test_output_shape_up_to_20000_genes(name, genes, graphs):
    model = make(name, genes, graphs, num_classes=3)
    # Only the input / output maps are G-sized: parameters grow linearly, nothing is G x G.
    assert sum(p.numel() for p in model.parameters()) < 200 * genes + 200_000
    x = torch.randn(2, genes)
    out = model(x, torch.tensor([10, 900]), {"label": torch.tensor([0, 2])})
    assert out.shape == (2, genes) and torch.isfinite(out).all()
    out.square().mean().backward()
    # Every parameter takes part, the null embedding too (DDP needs a gradient for each).
    assert [key for key, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", BACKBONES)
def test_time_and_label_change_the_output_and_none_is_the_null_label(name, graphs):
    model = randomize_zeros(make(name, 765, graphs, num_classes=4)).eval()
    x, t = torch.randn(3, 765), torch.tensor([5, 300, 700])
    labels = torch.tensor([0, 1, 2])
    out = model(x, t, {"label": labels})
    assert not torch.allclose(model(x, t + 50, {"label": labels}), out, atol=1e-4)
    assert not torch.allclose(model(x, t, {"label": labels + 1}), out, atol=1e-4)
    # Label index num_classes is the null label: the unconditional branch cond=None.
    null = torch.full((3,), 4)
    torch.testing.assert_close(model(x, t, {"label": null}), model(x, t, None))
    assert not torch.allclose(model(x, t, None), out, atol=1e-4)
    # A mixed batch: null rows equal their unconditional output, labelled rows their conditional one.
    mixed = model(x, t, {"label": torch.tensor([0, 4, 2])})
    torch.testing.assert_close(mixed[[0, 2]], out[[0, 2]])
    torch.testing.assert_close(mixed[1], model(x, t, None)[1])


@pytest.mark.parametrize("name", BACKBONES)
def test_label_starts_without_effect_but_learns(name, graphs):
    model = make(name, 765, graphs, num_classes=4)
    x, t = torch.randn(4, 765), torch.tensor([5, 300, 700, 999])
    first, second = {"label": torch.tensor([0, 1, 2, 3])}, {"label": torch.tensor([3, 2, 1, 0])}
    torch.testing.assert_close(model(x, t, first), model(x, t, second))  # AdaLN-Zero: blocks are the identity
    initial = {key: p.detach().clone() for key, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t, first) - x).square().mean().backward()
        optimizer.step()
    assert not torch.allclose(model(x, t, first), model(x, t, second), atol=1e-5)
    # No branch is stuck at zero (a zero gate times a zero projection never gets a gradient): every
    # parameter has moved, but the null embedding, which no sample of this batch asked for.
    unmoved = [key for key, p in model.named_parameters() if torch.equal(p, initial[key])]
    assert unmoved == ["conditioning.condition.null_embedding"]


@pytest.mark.parametrize("name", BACKBONES)
def test_condition_dropout_of_one_trains_the_unconditional_branch(name, graphs):
    model = randomize_zeros(make(name, 765, graphs, num_classes=4, cond_drop_prob=1.0))
    assert model.cond_drop_prob == 1.0
    x, t, cond = torch.randn(3, 765), torch.tensor([1, 2, 3]), {"label": torch.tensor([0, 1, 2])}
    model.train()
    torch.testing.assert_close(model(x, t, cond), model(x, t, None))
    model.eval()  # dropout is for training only
    assert not torch.allclose(model(x, t, cond), model(x, t, None), atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES)
def test_conditioning_errors(name, graphs):
    unconditional = make(name, 765, graphs)
    assert unconditional.cond_drop_prob == 0.0
    with pytest.raises(ValueError, match=r"cond\['label'\]: given, but network.num_classes is 0"):
        unconditional(torch.randn(2, 765), torch.tensor([1, 2]), {"label": torch.tensor([0, 1])})
    conditional = make(name, 765, graphs, num_classes=3)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\]"):
        conditional(torch.randn(2, 765), torch.tensor([1, 2]), {"label": torch.tensor([0, 5])})
    with pytest.raises(ValueError, match=r"x: .* expects \[B, 765\]"):
        conditional(torch.randn(2, 764), torch.tensor([1, 2]), None)
    with pytest.raises(ValueError, match="network.cond_drop_prob: is 0.1 but the network is unconditional"):
        make(name, 765, graphs, cond_drop_prob=0.1)


def test_residual_mlp_still_takes_a_conditioning_vector():
    model = randomize_zeros(build_backbone("residual_mlp", dim=8, hidden_dim=16, num_blocks=1, cond_dim=3))
    x, t = torch.randn(2, 8), torch.tensor([3, 4])
    vector = torch.randn(2, 3)
    torch.testing.assert_close(model(x, t, vector), model(x, t, {"vector": vector}))
    assert not torch.allclose(model(x, t, vector), model(x, t, None))


def path_graph_files(tmp_path) -> tuple[str, str]:
    """Genes g0 - g1 - g2 - g3 - g4 - g5 in a chain, g6 and g7 alone: as .npz and as a named edge list."""
    chain = [(i, i + 1) for i in range(5)]
    npz = save_adjacency(tmp_path / "chain.npz", sparse.coo_matrix((np.ones(5), tuple(zip(*chain, strict=True))),
                                                                  shape=(8, 8)))
    (tmp_path / "genes.txt").write_text("".join(f"g{i}\n" for i in range(8)))
    (tmp_path / "chain.csv").write_text("gene_a,gene_b,weight\n" + "".join(f"g{b},g{a},1\n" for a, b in chain))
    return str(npz), str(tmp_path / "chain.csv")


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_pathway_gnn_sees_exactly_num_layers_hops(tmp_path, num_layers):
    npz, _ = path_graph_files(tmp_path)
    model = randomize_zeros(build_backbone("pathway_gnn", dim=8, adjacency=npz, hidden_dim=8, num_layers=num_layers))
    x, t = torch.randn(2, 8), torch.tensor([100, 600])
    perturbed = x.clone()
    perturbed[:, 0] += 3.0
    change = (model(perturbed, t) - model(x, t)).abs().amax(dim=0)
    changed = change > 0
    # Gene 0 reaches genes 1..num_layers along the chain; nothing else moves at all (g6, g7 have no edges).
    assert (change[~changed] == 0).all()
    assert changed.tolist() == [i <= num_layers for i in range(6)] + [False, False]


def test_edge_list_with_gene_names_equals_the_npz(tmp_path):
    npz, edges = path_graph_files(tmp_path)
    from_npz = build_backbone("pathway_gnn", dim=8, adjacency=npz)
    from_edges = build_backbone("pathway_gnn", dim=8, adjacency=edges, genes_file=str(tmp_path / "genes.txt"))
    torch.testing.assert_close(from_npz.edge_index, from_edges.edge_index)
    torch.testing.assert_close(from_npz.edge_weight, from_edges.edge_weight)
    # D^-1/2 (A + I) D^-1/2 on the chain: g0 (degree 2 with its self loop) - g1 (degree 3): 1/sqrt(6).
    dense = from_npz.adjacency().to_dense()
    assert dense[0, 1] == pytest.approx(6**-0.5) and dense[1, 1] == pytest.approx(1 / 3) and dense[6, 6] == 1.0
    torch.testing.assert_close(dense, dense.T)


def test_coexpression_adjacency_links_planted_blocks_only():
    rng = np.random.default_rng(0)
    cells = 2000
    factors = rng.normal(size=(cells, 2))
    block_a = factors[:, :1] + 0.5 * rng.normal(size=(cells, 5))  # genes 0-4: r about 0.8 within
    block_b = -factors[:, 1:] + 0.7 * rng.normal(size=(cells, 4))  # genes 5-8: r about 0.67 within
    noise = rng.normal(size=(cells, 11))  # genes 9-19: |r| about 0.02
    matrix = np.concatenate([block_a, block_b, noise], axis=1)
    expected = np.zeros((20, 20), dtype=bool)
    expected[:5, :5] = expected[5:9, 5:9] = True
    np.fill_diagonal(expected, False)
    for data in (matrix, sparse.csr_matrix(matrix)):
        graph = coexpression_adjacency(data, top_k=4, min_abs_corr=0.3)
        np.testing.assert_array_equal(graph.toarray() > 0, expected)
        correlation = np.corrcoef(matrix, rowvar=False)
        np.testing.assert_allclose(graph.toarray()[expected], np.abs(correlation)[expected], rtol=1e-5)
    # top_k = 1: each gene keeps its strongest partner; an edge chosen by either end counts.
    assert 0 < coexpression_adjacency(matrix, top_k=1).nnz < expected.sum()


def test_bad_adjacency_files_name_the_option_and_the_file(tmp_path):
    save_adjacency(tmp_path / "small.npz", sparse.identity(5))
    (tmp_path / "broken.npz").write_text("not a zip")
    cases = {
        "absent.npz": "does not exist",
        "small.npz": "is a 5 x 5 matrix, but network.dim is 8 genes",
        "broken.npz": "is not a scipy sparse .npz file",
        "graph.json": "unknown table format",
        "header.csv": ("a,b\n0,1\n", "the header must be 'gene_a,gene_b'"),
        "range.csv": ("gene_a,gene_b\n0,8\n", "edge 1 names gene '8'; without network.genes_file"),
        "weight.csv": ("gene_a,gene_b,weight\n0,1,1\n1,2,strong\n", "edge 2 has weight 'strong', not a number"),
        "negative.tsv": ("gene_a\tgene_b\tweight\n0\t1\t-0.5\n", "negative or non-finite weights"),
        "ragged.csv": ("gene_a,gene_b\n0,1\n1,2,3,4\n", "cannot read the edge list"),
    }
    for name, expected in cases.items():
        if isinstance(expected, tuple):
            (tmp_path / name).write_text(expected[0])
            expected = expected[1]
        elif name == "graph.json":
            (tmp_path / name).write_text("{}")
        with pytest.raises(ValueError, match=rf"network.adjacency: .*{name}.*{expected}"):
            build_backbone("pathway_gnn", dim=8, adjacency=str(tmp_path / name))
    (tmp_path / "named.csv").write_text("gene_a,gene_b\nCD3E,CD8A\n")
    (tmp_path / "genes.txt").write_text("CD3E\nCD4\n")
    with pytest.raises(ValueError, match=r"network.adjacency: .*named.csv: gene 'CD8A' is not in network.genes_file"):
        load_adjacency(tmp_path / "named.csv", 2, tmp_path / "genes.txt")
    with pytest.raises(ValueError, match=r"network.dim: must be >= 1"):
        build_backbone("pathway_gnn", dim=0, adjacency=str(tmp_path / "small.npz"))


def held_out_loss(model, objective: DiffusionObjective, x0: torch.Tensor, labels: torch.Tensor) -> float:
    """The DDPM loss on every cell with t and eps drawn from a fixed seed (the same draws each call)."""
    model.eval()
    with torch.no_grad():
        return objective.loss(model, x0, {"label": labels}, generator=torch.Generator().manual_seed(5)).item()


@pytest.mark.filterwarnings("ignore:.*(very old version|without encoding metadata|Moving element)")  # an old anndata wrote it
def test_backbones_learn_pbmc_expression(tmp_path):
    """150 steps of the DDPM loss on 128 highly variable genes of 560 real cells: the loss at fixed t and
    eps falls to under half its starting value (about 1; measured 0.26-0.39 after training)."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None:
        pytest.skip("scanpy (which ships the pbmc68k_reduced test file) is not installed")
    data = build_dataset("anndata", "train", path=spec.submodule_search_locations[0] + "/datasets/10x_pbmc68k_reduced.h5ad",
                         layer="raw", label_key="bulk_labels", counts=False, highly_variable_genes=128, max_value=10.0)
    x0 = torch.stack([data[i]["x0"] for i in range(len(data))])
    labels = torch.as_tensor(data.labels)
    graph = save_adjacency(tmp_path / "coexpression.npz", coexpression_adjacency(data.expression, top_k=8))
    objective = DiffusionObjective(NoiseSchedule(make_betas("cosine", 1000)), parameterization="eps")
    for name in BACKBONES:
        options = {"adjacency": str(graph)} if name == "pathway_gnn" else {}
        torch.manual_seed(0)
        model = build_backbone(name, dim=128, num_classes=data.num_classes, cond_drop_prob=0.1,
                               **{**SMALL[name], **options})
        before = held_out_loss(model, objective, x0, labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(150):
            batch = torch.randint(0, len(x0), (64,), generator=generator)
            loss = objective.loss(model, x0[batch], {"label": labels[batch]}, generator=generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = held_out_loss(model, objective, x0, labels)
        assert after < 0.5 * before, (name, before, after)
