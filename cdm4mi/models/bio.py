"""Gene expression backbones: ``gene_attention`` (scRNA-seq) and ``pathway_gnn`` (a gene-gene graph), and
the graph files the latter reads.

Both map ``x`` [B, G] (G genes, standardized expression), ``t`` [B] and ``cond`` to [B, G], with the time
and cell-type conditioning of ``cdm4mi.models.mlp`` (AdaLN-Zero from ``c`` = time + label embedding; label
index ``num_classes`` or ``cond=None`` is the null label; ``cond_drop_prob`` trains it for guidance).

``gene_attention``: attention between all 20,000 genes of a cell would cost 4e8 pairs per head, so genes
are grouped into ``num_gene_tokens`` *gene modules*: consecutive chunks of ``ceil(G / num_gene_tokens)``
genes in input order. A module's token is ``sum over its genes of value * gene embedding + module bias``
(each gene has its own learned embedding), and a per-gene readout maps tokens back to genes, so the
G-sized weights are linear in G and attention runs over ``num_gene_tokens`` tokens. A residual MLP over
all genes (``cdm4mi.models.mlp``) runs beside the attention path; their outputs add.

``pathway_gnn``: every gene is a node with hidden vector ``h_g = value_g * w + e_g`` (``e_g`` a learned gene
embedding); ``num_layers`` message-passing layers ``h <- h + gate * MLP([m, A m])``, ``m`` the AdaLN-modulated
LayerNorm of ``h`` and ``A = D^-1/2 (W + I) D^-1/2`` the symmetric-normalised adjacency with self loops; a
per-gene readout gives the output. ``A m`` is a sparse product, so the cost is O(edges * B * hidden_dim)
and a gene's output depends only on genes at most ``num_layers`` edges away.

Adjacency files (``network.adjacency``), genes in the model's input order (the data set's ``gene_names``):

* ``.npz``: a square scipy sparse matrix (``save_adjacency``; ``coexpression_adjacency`` builds one);
* ``.csv`` / ``.tsv`` / ``.txt`` (optionally ``.gz``): an edge list with a header row ``gene_a,gene_b`` or
  ``gene_a,gene_b,weight``; genes are 0-based indices, or names when ``network.genes_file`` (a text file
  with one gene name per line, in input order) is given.

Edges are undirected (the larger weight of the two directions counts), weights must be non-negative
(default 1), and the diagonal is replaced by self loops of weight 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import sparse
from torch import nn

from cdm4mi.data.graph_files import load_adjacency
from cdm4mi.models.attention import Attention
from cdm4mi.models.mlp import (
    AdaLNModulation,
    ResidualMLPBody,
    VectorConditioning,
    check_positive,
    check_vector_input,
    modulate,
)
from cdm4mi.models.options import check_dropout
from cdm4mi.models.registry import BACKBONES


class GeneModules(nn.Module):
    """Genes [B, G] <-> module tokens [B, T, width] (module docstring). The readout starts at zero."""

    def __init__(self, num_genes: int, num_tokens: int, width: int):
        super().__init__()
        self.num_genes, self.num_tokens = num_genes, num_tokens
        self.chunk = math.ceil(num_genes / num_tokens)
        self.gene_embedding = nn.Parameter(torch.randn(num_tokens, self.chunk, width) / math.sqrt(self.chunk))
        self.module_bias = nn.Parameter(0.02 * torch.randn(num_tokens, width))
        self.readout = nn.Parameter(torch.zeros(num_tokens, width, self.chunk))
        self.readout_bias = nn.Parameter(torch.zeros(num_genes))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(x, (0, self.num_tokens * self.chunk - self.num_genes))
        values = padded.view(x.shape[0], self.num_tokens, self.chunk)
        return torch.einsum("btc,tcw->btw", values, self.gene_embedding) + self.module_bias

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        genes = torch.einsum("btw,twc->btc", tokens, self.readout).flatten(1)
        return genes[:, : self.num_genes] + self.readout_bias


class GeneTokenBlock(nn.Module):
    """AdaLN-Zero transformer block: gated self-attention between tokens, then a gated MLP.
    ``forward(tokens [B, T, width], c [B, embed_dim]) -> [B, T, width]``; the identity at initialisation."""

    def __init__(self, width: int, num_heads: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attention = Attention(width, width // num_heads)
        # The gate already starts at zero; a zero output projection as well would leave both without gradient.
        self.attention.out.reset_parameters()
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.modulation = AdaLNModulation(embed_dim, width, 6)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(c, token_axes=1)
        tokens = tokens + gate_attn * self.attention(modulate(self.norm1(tokens), shift_attn, scale_attn))
        return tokens + gate_mlp * self.mlp(modulate(self.norm2(tokens), shift_mlp, scale_mlp))


@BACKBONES.register("gene_attention")
class GeneAttention(nn.Module):
    """Attention between gene modules plus a residual MLP: ``forward(x [B, dim], t [B], cond) -> [B, dim]``.

    ``dim`` genes are grouped into ``num_gene_tokens`` module tokens of width ``hidden_dim`` (module
    docstring); ``num_blocks`` AdaLN-Zero transformer blocks with ``num_heads`` heads attend between them.
    The residual MLP path has ``num_mlp_blocks`` blocks of width ``hidden_dim``. ``num_classes`` /
    ``cond_drop_prob``: cell-type conditioning as in ``residual_mlp``.
    """

    def __init__(self, dim: int, hidden_dim: int = 128, num_gene_tokens: int = 64, num_heads: int = 4,
                 num_blocks: int = 2, num_mlp_blocks: int = 2, time_embed_dim: int = 128, dropout: float = 0.0,
                 num_classes: int = 0, cond_drop_prob: float = 0.0):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim, num_gene_tokens=num_gene_tokens, num_heads=num_heads,
                       time_embed_dim=time_embed_dim)
        if num_gene_tokens > dim:
            raise ValueError(f"network.num_gene_tokens: {num_gene_tokens} is more than the {dim} genes (network.dim)")
        if hidden_dim % num_heads:
            raise ValueError(f"network.num_heads: {num_heads} does not divide hidden_dim {hidden_dim}")
        if min(num_blocks, num_mlp_blocks) < 0:
            raise ValueError(f"network.num_blocks / num_mlp_blocks: must be >= 0, got {num_blocks} / {num_mlp_blocks}")
        check_dropout(dropout)
        self.dim, self.num_classes = dim, num_classes
        self.conditioning = VectorConditioning(time_embed_dim, num_classes, cond_drop_prob)
        self.cond_drop_prob, self.size_multiple = cond_drop_prob, 1  # vectors: no spatial sides
        self.gene_modules = GeneModules(dim, num_gene_tokens, hidden_dim)
        self.blocks = nn.ModuleList(GeneTokenBlock(hidden_dim, num_heads, time_embed_dim, dropout)
                                    for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = AdaLNModulation(time_embed_dim, hidden_dim, 2)
        self.mlp = ResidualMLPBody(dim, hidden_dim, num_mlp_blocks, time_embed_dim, dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        check_vector_input(x, self.dim, "gene_attention")
        c = self.conditioning(t, cond, x)
        tokens = self.gene_modules.encode(x)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c, token_axes=1)
        return self.gene_modules.decode(modulate(self.final_norm(tokens), shift, scale)) + self.mlp(x, c)


def propagate(adjacency: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``A h`` for every sample: sparse ``adjacency`` [G, G], ``h`` [B, G, H] -> [B, G, H] (float32 product)."""
    batch, genes, width = h.shape
    flat = h.float().permute(1, 0, 2).reshape(genes, batch * width)
    return torch.sparse.mm(adjacency, flat).view(genes, batch, width).permute(1, 0, 2).to(h.dtype)


class MessagePassingLayer(nn.Module):
    """``h + gate * MLP([m, A m])``, ``m = modulate(LayerNorm(h))`` with shift / scale / gate from ``c``.
    ``forward(h [B, G, H], c [B, embed_dim], adjacency [G, G] sparse) -> [B, G, H]``; identity at initialisation."""

    def __init__(self, width: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * width, width))
        self.modulation = AdaLNModulation(embed_dim, width, 3)

    def forward(self, h: torch.Tensor, c: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c, token_axes=1)
        m = modulate(self.norm(h), shift, scale)
        return h + gate * self.mlp(torch.cat([m, propagate(adjacency, m)], dim=-1))


@BACKBONES.register("pathway_gnn")
class PathwayGNN(nn.Module):
    """Message passing over a gene-gene graph: ``forward(x [B, dim], t [B], cond) -> [B, dim]``.

    ``adjacency``: the graph file (module docstring), ``genes_file``: gene names in input order for an
    edge list that names genes. ``hidden_dim`` is the per-gene width H (activations are B * dim * H, so
    keep it small), ``num_layers`` the message-passing layers (a gene sees genes up to that many edges
    away). ``num_classes`` / ``cond_drop_prob``: cell-type conditioning as in ``residual_mlp``.
    """

    def __init__(self, dim: int, adjacency: str, genes_file: str | None = None, hidden_dim: int = 16,
                 num_layers: int = 2, time_embed_dim: int = 64, dropout: float = 0.0, num_classes: int = 0,
                 cond_drop_prob: float = 0.0):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim, num_layers=num_layers, time_embed_dim=time_embed_dim)
        check_dropout(dropout)
        self.dim, self.num_classes = dim, num_classes
        self.conditioning = VectorConditioning(time_embed_dim, num_classes, cond_drop_prob)
        self.cond_drop_prob, self.size_multiple = cond_drop_prob, 1  # vectors: no spatial sides
        indices, weights = normalized_adjacency(load_adjacency(adjacency, dim, genes_file))
        # Buffers, so a checkpoint carries its graph: loading it into a model built from another graph
        # with a different number of edges fails instead of silently mixing the two.
        self.register_buffer("edge_index", torch.from_numpy(indices))
        self.register_buffer("edge_weight", torch.from_numpy(weights))
        self.value_weight = nn.Parameter(torch.randn(hidden_dim))
        self.gene_embedding = nn.Parameter(torch.randn(dim, hidden_dim))
        self.layers = nn.ModuleList(MessagePassingLayer(hidden_dim, time_embed_dim, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = AdaLNModulation(time_embed_dim, hidden_dim, 2)
        self.readout = nn.Parameter(torch.zeros(dim, hidden_dim))
        self.readout_bias = nn.Parameter(torch.zeros(dim))

    def adjacency(self) -> torch.Tensor:
        """The normalised adjacency as a sparse [dim, dim] float32 tensor (its buffers are already coalesced)."""
        # float32 even in a bf16 / fp16 model: the sparse product runs in float32 (``propagate``).
        return torch.sparse_coo_tensor(self.edge_index, self.edge_weight.float(), (self.dim, self.dim),
                                       is_coalesced=True, check_invariants=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        check_vector_input(x, self.dim, "pathway_gnn")
        c = self.conditioning(t, cond, x)
        adjacency = self.adjacency()
        h = x[..., None] * self.value_weight + self.gene_embedding
        for layer in self.layers:
            h = layer(h, c, adjacency)
        shift, scale = self.final_modulation(c, token_axes=1)
        return (modulate(self.final_norm(h), shift, scale) * self.readout).sum(-1) + self.readout_bias


def normalized_adjacency(adjacency: sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """``D^-1/2 (W + I) D^-1/2`` of a symmetric non-negative [G, G] matrix ``W`` (its diagonal replaced by
    self loops of weight 1): coalesced COO ``(indices int64 [2, E], values float32 [E])``, rows then columns sorted."""
    matrix = sparse.csr_matrix(adjacency, dtype=np.float64)
    matrix = (matrix - sparse.diags(matrix.diagonal()) + sparse.identity(matrix.shape[0])).tocsr()
    matrix.eliminate_zeros()
    matrix = matrix.tocoo()
    inverse_sqrt_degree = 1.0 / np.sqrt(np.asarray(matrix.sum(axis=1)).ravel())
    values = matrix.data * inverse_sqrt_degree[matrix.row] * inverse_sqrt_degree[matrix.col]
    order = np.lexsort((matrix.col, matrix.row))
    indices = np.stack([matrix.row[order], matrix.col[order]]).astype(np.int64)
    return indices, values[order].astype(np.float32)
















