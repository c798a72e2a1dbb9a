"""A shipped config (preset) for every registered backbone and for every conditioning mode of the U-Net in 2D and 3D,
each trained two steps through ``cdm4mi train --config NAME`` (found by name, not by path) on data that ships or that
the test makes: phantom CT patients, the generated point sets, scanpy's pbmc68k_reduced."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from cli_runs import make_ct_hospital, quick_training

from cdm4mi.cli.main import main
from cdm4mi.config import load_config
from cdm4mi.data.graph_files import coexpression_adjacency, save_adjacency
from cdm4mi.data.registry import build_dataset
from cdm4mi.models.options import CONDITIONING_KEYS
from cdm4mi.models.registry import BACKBONES, _register_builtins
from cdm4mi.presets import shipped_configs
from cdm4mi.simulate.hospital import HospitalSpec

SCANPY = importlib.util.find_spec("scanpy")
PBMC = Path(SCANPY.submodule_search_locations[0]) / "datasets" / "10x_pbmc68k_reduced.h5ad" if SCANPY else None

UNET_2D = ["network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16",
           "network.channel_mult=[1,2]", "network.attention_levels=[false,true]", "data.patch_size=[32,32]"]
UNET_3D = ["network.channel_mult=[1,2]", "network.attention_levels=[false,true]", "data.patch_size=[4,16,16]",
           "data.patches_per_volume=2"]
PBMC_DATA = [f"data.path={PBMC}", "data.num_cells=200"]
# preset -> (the data it trains on, tiny overrides)
PRESETS = {
    "ldct_2d_concat": ("ct", UNET_2D),
    "ldct_2d_crossattn": ("ct", UNET_2D),
    "ldct_2d_adaln": ("ct", UNET_2D),
    "ldct_2d_hybrid": ("ct", UNET_2D),
    "ldct_3d_concat": ("ct", UNET_3D),
    "ldct_3d_crossattn": ("ct", UNET_3D),
    "ldct_3d_adaln": ("ct", UNET_3D),
    "ldct_3d_hybrid": ("ct", UNET_3D),
    "dit_2d": ("ct", ["network.hidden_size=32", "network.depth=1", "network.num_head_channels=16",
                      "data.patch_size=[32,32]"]),
    "ldct_2d_monai_unet": ("ct", UNET_2D),
    "toy2d": ("generated", ["data.num_samples=64"]),
    "vector_gaussian": ("generated", ["data.num_samples=64"]),
    "pbmc_residual_mlp": ("pbmc", [*PBMC_DATA, "network.hidden_dim=32", "network.num_blocks=1"]),
    "pbmc_gene_attention": ("pbmc", [*PBMC_DATA, "network.hidden_dim=32", "network.num_gene_tokens=16",
                                     "network.num_blocks=1", "network.num_mlp_blocks=1"]),
    "pbmc_pathway_gnn": ("pbmc", [*PBMC_DATA, "network.hidden_dim=8", "network.num_layers=1"]),
}


def test_every_backbone_and_conditioning_mode_has_a_trained_preset():
    _register_builtins()
    networks = {name: load_config(name).network for name in PRESETS}
    assert set(PRESETS) <= set(shipped_configs())
    assert {network["name"] for network in networks.values()} == set(BACKBONES.names())
    modes = {(network.get("spatial_dims", 2), network.get("conditioning_key"))
             for network in networks.values() if network["name"] == "unet"}
    assert modes >= {(dims, key) for dims in (2, 3) for key in CONDITIONING_KEYS if key is not None}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[str]]:
    """Overrides pointing each kind of preset at its data: a phantom CT manifest (4 patients of 4 slices of 32x32),
    nothing for generated points."""
    root = tmp_path_factory.mktemp("presets")
    manifest, _ = make_ct_hospital(root, HospitalSpec(num_patients=4, shape=(4, 32, 32)))
    return {"ct": [f"data.manifest={manifest}"], "generated": [], "pbmc": []}


@pytest.fixture(scope="module")
def pbmc_graph(tmp_path_factory) -> Path:
    """A co-expression graph over pbmc68k_reduced's 765 genes, as pbmc_pathway_gnn.yaml says to build one."""
    cells = build_dataset("anndata", "train", path=str(PBMC), layer="raw", label_key="bulk_labels", counts=False,
                          max_value=10.0, num_cells=200)
    return save_adjacency(tmp_path_factory.mktemp("graph") / "coexpression.npz",
                          coexpression_adjacency(cells.expression, top_k=8))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*(very old version|without encoding metadata|Moving element)")  # pbmc's old anndata
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_two_steps_through_the_cli(preset, data, request, tmp_path, capsys):
    kind, tiny = PRESETS[preset]
    if kind == "pbmc" and PBMC is None:
        pytest.skip("scanpy (which ships pbmc68k_reduced; the test extra) is not installed")
    extra = [f"network.adjacency={request.getfixturevalue('pbmc_graph')}"] if preset == "pbmc_pathway_gnn" else []
    status = main(["train", "--config", preset, f"output_dir={tmp_path / 'run'}", *data[kind], *tiny, *extra,
                   *quick_training(2)])
    printed, errors = capsys.readouterr()
    assert status == 0, errors[-2000:]
    assert "trained 2 steps" in printed and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
