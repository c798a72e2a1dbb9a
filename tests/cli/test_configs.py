"""Every shipped config loads, validates and builds a network that runs; ``base:`` inheritance."""

from pathlib import Path

import pytest
import torch

from cdm4mi.config import load_config
from cdm4mi.models import build_backbone

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# Image networks; the vector configs (toy2d, vector_gaussian) are trained end to end in tests/training/test_training.py.
IMAGE_CONFIGS = [path for path in CONFIGS if load_config(path).network["name"] in ("unet", "dit", "monai_unet")]


def example_cond(network: dict, data: dict, x: torch.Tensor) -> object:
    """A condition of the shape the config's network takes (image / metadata vector / label)."""
    key = network.get("conditioning_key")
    if key is None:
        return None
    cond = {}
    image_channels = network.get("cond_channels")
    if image_channels is None:
        stacked = key in ("concat", "hybrid", "adaln")
        image_channels = network["in_channels"] - network["out_channels"] if stacked else 1
    if image_channels:
        cond["image"] = torch.randn(x.shape[0], image_channels, *x.shape[2:])
    if network.get("vector_dim"):
        cond["vector"] = torch.randn(x.shape[0], network["vector_dim"])
        assert network["vector_dim"] == 2 * len(data.get("metadata") or []), "vector_dim = 2 per data.metadata field"
    if network.get("num_classes"):
        cond["label"] = torch.zeros(x.shape[0], dtype=torch.long)
    return cond


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=[p.stem for p in IMAGE_CONFIGS])
def test_shipped_config_builds_a_network_that_runs(path):
    config = load_config(path)
    network = dict(config.network)
    model = build_backbone(network.pop("name"), **network).eval()
    spatial = (16, 32, 32) if network.get("spatial_dims") == 3 else (64, 64)
    x = torch.randn(1, network.get("out_channels", 1), *spatial)
    with torch.no_grad():
        out = model(x, torch.tensor([10]), example_cond(config.network, config.data, x))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_base_configs_merge_section_by_section(tmp_path):
    (tmp_path / "parent.yaml").write_text("network: {name: unet, base_channels: 16, norm_groups: 8}\n"
                                          "data: {name: gaussian_mixture}\ntraining: {max_steps: 7}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nnetwork: {base_channels: 32}\n")
    config = load_config(tmp_path / "child.yaml", ["training.batch_size=3"])
    assert config.network == {"name": "unet", "base_channels": 32, "norm_groups": 8}
    assert (config.training.max_steps, config.training.batch_size) == (7, 3)
    crossattn = load_config(Path(CONFIGS[0]).parent / "ldct_2d_crossattn.yaml")
    assert crossattn.network["conditioning_key"] == "crossattn" and crossattn.data["mode"] == "2d"


@pytest.mark.parametrize("text, message", [
    ("base: missing.yaml\n", r"child.yaml: base: file not found: .*missing.yaml"),
    ("base: child.yaml\n", "child.yaml: base: child.yaml leads back to itself"),
    ("base: [1]\n", r"child.yaml: base: expected a config file name, got \[1\]"),
])
def test_bad_base_is_named(tmp_path, text, message):
    (tmp_path / "child.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path / "child.yaml")


def test_a_base_naming_another_component_is_replaced_not_merged():
    cifar_dit = load_config(Path(CONFIGS[0]).parent / "cifar10_dit.yaml")
    assert cifar_dit.network["name"] == "dit" and "base_channels" not in cifar_dit.network
    assert cifar_dit.data == {"name": "cifar10", "root": "data/cifar-10-batches-py", "class_conditional": True}


@pytest.mark.parametrize("name", ["toy_moons", "toy_swiss_roll", "pbmc_residual_mlp"])
def test_vector_configs_build(name):
    config = load_config(Path(CONFIGS[0]).parent / f"{name}.yaml")
    network = dict(config.network)
    model = build_backbone(network.pop("name"), **network).eval()
    x = torch.randn(3, network["dim"])
    cond = {"label": torch.tensor([0, 1, 2])} if network.get("num_classes") else None
    assert model(x, torch.tensor([1.0, 500.0, 999.0]), cond).shape == x.shape


def test_a_shipped_config_is_found_by_name_and_a_file_by_path(tmp_path, monkeypatch):
    from cdm4mi.presets import CONFIG_DIR, resolve_config, shipped_configs

    assert set(shipped_configs()) == {path.stem for path in CONFIGS}  # the checkout's configs/ is the package's
    assert resolve_config("ldct_2d") == resolve_config("ldct_2d.yaml") == CONFIG_DIR / "ldct_2d.yaml"
    assert load_config("ldct_2d_crossattn") == load_config(CONFIG_DIR / "ldct_2d_crossattn.yaml")  # base: resolved too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy2d.yaml").write_text("network: {name: simple_score}\ndata: {name: moons}\n")
    assert resolve_config("toy2d.yaml") == Path("toy2d.yaml")  # a file of that path wins over the shipped config
    assert load_config("toy2d.yaml").data == {"name": "moons"} and load_config("toy2d").data["name"] == "gaussian_mixture"
    with pytest.raises(ValueError, match=r"^--config: no shipped config named 'ldct_9d'; shipped: cifar10_dit, "):
        load_config("ldct_9d")
    with pytest.raises(ValueError, match=r"^--config: file not found: configs/ldct_2d.yaml; the shipped config of that "
                                         r"name is --config ldct_2d$"):
        load_config("configs/ldct_2d.yaml")  # a README path, run outside the checkout
