"""DiT: patchify round trips, every conditioning mode in 2D and 3D, AdaLN-Zero blocks that start as identities
and an output that starts at zero, the condition and time matter, a dropped condition is the unconditional
branch, batch independence, windowed attention, gradient checkpointing, the errors a user sees, the registry
and the shipped config."""

from pathlib import Path

import pytest
import torch

from cdm4mi.config import load_config
from cdm4mi.models import build_backbone
from cdm4mi.models import dit as dit_module
from cdm4mi.models.dit import DiT, DiTBlock, FinalLayer
from cdm4mi.models.inputs import patchify, unpatchify

TINY = {"hidden_size": 32, "depth": 2, "num_head_channels": 8, "patch_size": 2, "token_dim": 16, "cond_patch_size": 4}

# mode -> (constructor options, the parts of cond it takes)
MODES = {
    "unconditional": ({"conditioning_key": None, "in_channels": 1}, ()),
    "concat": ({"conditioning_key": "concat", "vector_dim": 3}, ("image", "vector")),
    "crossattn": ({"conditioning_key": "crossattn", "in_channels": 1, "vector_dim": 3}, ("image", "vector")),
    "hybrid": ({"conditioning_key": "hybrid", "num_classes": 4}, ("image", "label")),
    "adaln": ({"conditioning_key": "adaln", "in_channels": 1, "vector_dim": 3, "num_classes": 4}, ("vector", "label")),
}
CONDITIONAL = [mode for mode in MODES if mode != "unconditional"]
SPATIAL = {"2d": (16, 16), "3d": (8, 8, 8)}


def build(mode: str = "concat", spatial_dims: int = 2, **overrides) -> DiT:
    torch.manual_seed(0)
    return DiT(spatial_dims=spatial_dims, **{**TINY, **MODES[mode][0], **overrides})


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every weight, so zero-initialised layers stop hiding the input, time and condition paths."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def inputs(mode: str, batch: int = 2, spatial: tuple[int, ...] = (16, 16), seed: int = 2):
    """x [B, 1, *spatial], timesteps [B] and a condition of the parts ``mode`` takes (None if it takes none)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *spatial, generator=generator)
    full = {"image": torch.randn(batch, 1, *spatial, generator=generator),
            "vector": torch.randn(batch, 3, generator=generator),
            "label": torch.randint(0, 4, (batch,), generator=generator)}
    cond = {key: full[key] for key in MODES[mode][1]} or None
    return x, torch.arange(batch) * 100 + 10, cond


def changed(cond: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """``cond`` with one part replaced by a different value of the same shape."""
    value = (cond[key] + 1) % 4 if key == "label" else cond[key] + torch.randn_like(cond[key])
    return {**cond, key: value}


@pytest.mark.parametrize("shape, patch_size", [((2, 3, 8, 12), 4), ((2, 2, 4, 8, 6), 2), ((1, 1, 6, 6), 1)])
def test_patchify_and_unpatchify_are_exact_inverses(shape, patch_size):
    x = torch.randn(shape)
    tokens = patchify(x, patch_size)
    dims = len(shape) - 2
    grid = [size // patch_size for size in shape[2:]]
    assert tokens.shape == (shape[0], torch.Size(grid).numel(), shape[1] * patch_size**dims)
    assert torch.equal(unpatchify(tokens, patch_size, shape[2:], shape[1]), x)


def test_patches_are_in_raster_order_with_channel_major_features():
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)  # 2 channels, values 0..15 and 16..31
    tokens = patchify(x, 2)
    assert tokens[0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]  # top-left patch, channel 0 then 1
    assert tokens[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]  # its right neighbour
    assert tokens[0, 2].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]  # the patch below


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_patch_embedding_is_a_linear_map_of_each_patchify_row(dims):
    model = build("concat", spatial_dims=len(SPATIAL[dims]))
    x = torch.randn(2, 2, *SPATIAL[dims])
    convolved = model.patch_embedding(x).flatten(2).transpose(1, 2)
    weight = model.patch_embedding.weight.flatten(1)
    torch.testing.assert_close(convolved, patchify(x, 2) @ weight.T + model.patch_embedding.bias)


@pytest.mark.parametrize("dims", list(SPATIAL))
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_in_2d_and_3d_and_its_condition_matters(mode, dims):
    spatial = SPATIAL[dims]
    stacked = int(mode in ("concat", "hybrid"))  # a one-channel conditioning image on the input channels
    model = perturbed(build(mode, spatial_dims=len(spatial), in_channels=2 + stacked, out_channels=2))
    x, t, cond = inputs(mode, 2, spatial)
    x = torch.cat([x, x.flip(0)], dim=1)  # two channels in, two out
    out = model(x, t, cond)
    assert out.shape == (2, 2, *spatial) and torch.isfinite(out).all()
    assert (model(x, t + 400, cond) - out).abs().mean() > 1e-3
    for key in MODES[mode][1]:
        assert (model(x, t, changed(cond, key)) - out).abs().mean() > 1e-3, key
    if dims == "3d":
        assert not any(isinstance(module, torch.nn.Conv2d) for module in model.modules())


@pytest.mark.parametrize("window, context_channels", [(None, None), (3, None), (None, 16), (4, 16)])
def test_every_block_is_the_identity_at_initialisation(window, context_channels):
    torch.manual_seed(0)
    block = DiTBlock(32, 8, 4.0, 0.0, window, context_channels)
    tokens, c = 5 * torch.randn(2, 64, 32), 5 * torch.randn(2, 32)
    context = torch.randn(2, 7, 16) if context_channels else None
    assert torch.equal(block(tokens, c, (8, 8), context), tokens)
    assert (perturbed(block)(tokens, c, (8, 8), context) - tokens).abs().mean() > 1e-2  # the check can fail


def test_final_layer_starts_at_zero_and_is_modulated_by_c():
    torch.manual_seed(0)
    final = FinalLayer(32, 2**2 * 3)  # patch 2, 3 output channels
    tokens, c = torch.randn(2, 64, 32), torch.randn(2, 32)
    assert torch.equal(final(tokens, c), torch.zeros(2, 64, 12))
    perturbed(final)
    assert (final(tokens, c) - final(tokens, c + 1.0)).abs().mean() > 1e-3


@pytest.mark.parametrize("mode", list(MODES))
def test_output_is_zero_at_init_and_moves_after_one_step(mode):
    model = build(mode)
    x, t, cond = inputs(mode)
    assert torch.equal(model(x, t, cond), torch.zeros(2, 1, 16, 16))
    assert (perturbed(build(mode))(x, t, cond)).abs().mean() > 1e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(model(x, t, cond), torch.ones(2, 1, 16, 16)).backward()
    optimizer.step()
    assert model(x, t, cond).abs().mean() > 1e-4


def test_self_attention_and_its_gate_both_learn():
    """AdaLN-Zero zeroes the gate; the attention's output projection must not start at zero as well,
    or neither ever gets a gradient and the transformer trains as an MLP (caught in issue 5)."""
    model = build("unconditional")
    x, t, cond = inputs("unconditional")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, cond), torch.ones(2, 1, 16, 16)).backward()
        optimizer.step()
    block = model.blocks[0]
    gate_attn = block.modulation[1].weight.chunk(6)[2]
    assert gate_attn.abs().max() > 1e-4 and block.attention.out.weight.abs().min() > 0


@pytest.mark.parametrize("dims", list(SPATIAL))
def test_tokens_know_their_grid_position(dims):
    # A constant input gives identical patches; only the position features can tell them apart.
    spatial = SPATIAL[dims]
    model = perturbed(build("concat", spatial_dims=len(spatial), vector_dim=0))
    x = torch.ones(1, 1, *spatial)
    tokens = patchify(model(x, 10, x), 2)[0]
    assert (tokens - tokens.mean(0)).abs().mean() > 1e-3


def test_windowed_positions_repeat_in_every_window():
    # Trained on window-sized crops, the model must see the same positions in each window of a larger image:
    # a constant image then gives the same output in every (whole) window.
    model = perturbed(build("concat", vector_dim=0, attention_window=4))  # patch 2: windows of 8x8 pixels
    x = torch.ones(1, 1, 16, 24)
    out = model(x, 10, x)[0, 0]
    windows = [out[r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8, 16)]
    for window in windows[1:]:
        torch.testing.assert_close(window, windows[0])
    crop = model(torch.ones(1, 1, 8, 8), 10, torch.ones(1, 1, 8, 8))[0, 0]
    torch.testing.assert_close(crop, windows[0])


@pytest.mark.parametrize("mode", CONDITIONAL)
def test_a_dropped_condition_is_the_unconditional_branch(mode):
    model = perturbed(build(mode, cond_drop_prob=1.0))
    assert model.cond_drop_prob == 1.0  # the LightningModule reads it to allow guidance
    x, t, cond = inputs(mode)
    unconditional = model(x, t, None)
    dropped = model.train()(x, t, cond)
    torch.testing.assert_close(dropped, unconditional, rtol=1e-5, atol=1e-5)
    assert (model.eval()(x, t, cond) - unconditional).abs().mean() > 1e-3


def test_scalar_and_float_timesteps_broadcast_to_the_batch():
    model = perturbed(build())
    x, _, cond = inputs("concat")
    expected = model(x, torch.tensor([7, 7]), cond)
    for t in (7, 7.0, torch.tensor(7)):
        torch.testing.assert_close(model(x, t, cond), expected)


@pytest.mark.parametrize("window", [None, 3])  # 3 on an 8x8 grid: padded windows with masked keys
def test_samples_do_not_mix_across_the_batch(window):
    model = perturbed(build("hybrid", attention_window=window))
    x, t, cond = inputs("hybrid", 3)
    out = model(x, t, cond)
    x2, t2 = x.clone(), t.clone()
    image2, label2 = cond["image"].clone(), cond["label"].clone()
    x2[1], t2[1], image2[1], label2[1] = -x[1], 999, torch.randn_like(image2[1]), (label2[1] + 1) % 4
    moved = model(x2, t2, {"image": image2, "label": label2})
    torch.testing.assert_close(moved[[0, 2]], out[[0, 2]], rtol=1e-5, atol=1e-6)
    assert (moved[1] - out[1]).abs().mean() > 1e-3
    torch.testing.assert_close(model(x[:1], t[:1], {k: v[:1] for k, v in cond.items()}), out[:1],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", list(SPATIAL))
def test_a_window_covering_the_grid_is_global_attention(dims):
    spatial = SPATIAL[dims]
    global_model = perturbed(build("crossattn", spatial_dims=len(spatial)))
    x, t, cond = inputs("crossattn", 2, spatial)
    expected = global_model(x, t, cond)
    for window in (max(spatial) // 2, 100):  # exactly the token grid, and larger
        windowed = build("crossattn", spatial_dims=len(spatial), attention_window=window)
        windowed.load_state_dict(global_model.state_dict())
        torch.testing.assert_close(windowed.eval()(x, t, cond), expected, rtol=1e-5, atol=1e-5)


def test_windowed_attention_keeps_each_window_to_itself():
    # 16x16 pixels, patch 2: an 8x8 token grid in four 4x4-token (8x8-pixel) windows; no shift, so a change
    # inside the top-left window reaches no other window, however deep the network.
    model = perturbed(build("concat", attention_window=4))
    x, t, cond = inputs("concat")
    out = model(x, t, cond)
    x2 = x.clone()
    x2[..., :8, :8] += 1.0
    moved = model(x2, t, cond)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[:8, :8] = False
    torch.testing.assert_close(moved[..., outside], out[..., outside], rtol=1e-5, atol=1e-6)
    assert (moved[..., :8, :8] - out[..., :8, :8]).abs().mean() > 1e-3
    assert (perturbed(build("concat"))(x2, t, cond) - out).abs()[..., outside].mean() > 1e-3  # global mixes


def test_gradient_checkpointing_gives_the_same_output_and_gradients(monkeypatch):
    calls, real_checkpoint = [], dit_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(args[0])
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(dit_module, "checkpoint", counting_checkpoint)
    plain = build("hybrid", dropout=0.1, attention_window=3)
    checkpointed = build("hybrid", dropout=0.1, attention_window=3, gradient_checkpointing=True)
    checkpointed.load_state_dict(perturbed(plain).state_dict())
    x, t, cond = inputs("hybrid")
    outputs, gradients = [], []
    for model in (plain.train(), checkpointed.train()):
        torch.manual_seed(3)  # same dropout masks; checkpoint must replay them when recomputing
        out = model(x, t, cond)
        out.square().mean().backward()
        outputs.append(out)
        gradients.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1])
    for plain_grad, checkpointed_grad in zip(*gradients, strict=True):
        torch.testing.assert_close(plain_grad, checkpointed_grad)
    assert len(calls) == len(checkpointed.blocks) == 2
    calls.clear()
    with torch.no_grad():
        checkpointed(x, t, cond)
    assert not calls  # nothing to save when no graph is built


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"spatial_dims": 1}, "network.spatial_dims: must be 2 or 3, got 1"),
        ({"patch_size": 0}, "network.patch_size: must be >= 1, got 0"),
        ({"depth": 0}, "network.depth: must be >= 1, got 0"),
        ({"num_head_channels": 12}, "network.num_head_channels: 12 does not divide hidden_size 32"),
        ({"mlp_ratio": 0.0}, "network.mlp_ratio: must be > 0"),
        ({"dropout": 1.0}, r"network.dropout: must lie in \[0, 1\)"),
        ({"attention_window": 0}, "network.attention_window: must be >= 1"),
        ({"conditioning_key": "film"}, "network.conditioning_key: must be one of"),
        ({"in_channels": 1}, "network.conditioning_key: 'concat' stacks a conditioning image, but it has 0"),
        ({"conditioning_key": None, "in_channels": 1, "vector_dim": 3}, "network.conditioning_key: is None .* but"),
        ({"cond_drop_prob": 1.5}, r"network.cond_drop_prob: must lie in \[0, 1\]"),
    ],
)
def test_inconsistent_options_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        build("concat", **{"vector_dim": 0, **overrides})


def test_inconsistent_inputs_are_rejected():
    model = build("concat", vector_dim=0, patch_size=4)
    x, t, cond = torch.zeros(2, 1, 16, 16), torch.tensor([1, 2]), torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"x: spatial size \(18, 16\) must be divisible by 4 \(network.patch_size\); "
                                         r"pad to \(20, 16\)"):
        model(torch.zeros(2, 1, 18, 16), t, torch.zeros(2, 1, 18, 16))
    with pytest.raises(ValueError, match=r"cond\['image'\]: network 'concat' expects shape \(2, 1, 16, 16\)"):
        model(x, t, cond[..., :8])
    with pytest.raises(ValueError, match=r"network.in_channels: is 2 but x \(2\) \+ cond \(1\) give 3 channels"):
        model(torch.cat([x, x], dim=1), t, cond)
    with pytest.raises(ValueError, match="network.spatial_dims: model is 2D"):
        model(x[None], t, cond[None])
    with pytest.raises(ValueError, match=r"t: expected a scalar or 2 timesteps"):
        model(x, torch.tensor([1, 2, 3]), cond)
    with pytest.raises(ValueError, match="cond: network.conditioning_key is None"):
        build("unconditional")(x, t, cond)
    with pytest.raises(ValueError, match=r"x: spatial size \(6, 8\) must be divisible by network.patch_size 4"):
        patchify(torch.zeros(1, 1, 6, 8), 4)
    with pytest.raises(ValueError, match=r"tokens: \(1, 4, 16\) are not 4-patches of a 2-channel image"):
        unpatchify(torch.zeros(1, 4, 16), 4, (8, 8), 2)


def test_built_through_the_registry_with_config_types():
    model = build_backbone("dit", **{**TINY, "hidden_size": "32", "mlp_ratio": "2", "attention_window": None})
    assert isinstance(model, DiT) and model.blocks[0].mlp[0].out_features == 64
    assert model(*inputs("concat")[:2], cond=torch.zeros(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="network.hidden_size"):
        build_backbone("dit", hidden_size="wide")
    with pytest.raises(ValueError, match="network.conditioning_key"):
        build_backbone("dit", conditioning_key="film")
    with pytest.raises(ValueError, match="network.base_channels: unknown option for 'dit'"):
        build_backbone("dit", base_channels=32)
    # Defaults are DiT-S/2 (Peebles & Xie 2023, Table 1: 33M with its class embedding and learned sigma).
    assert 31e6 < sum(p.numel() for p in build_backbone("dit").parameters()) < 34e6


def test_shipped_config_builds_a_windowed_dit_that_runs():
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "dit_2d.yaml")
    network = dict(config.network)
    model = build_backbone(network.pop("name"), **network).eval()
    assert isinstance(model, DiT) and model.blocks[0].window == 16 and model.patch_size == 4
    assert 1.5e6 < sum(p.numel() for p in model.parameters()) < 2.5e6
    x = torch.randn(1, 1, 96, 96)  # a 24x24 token grid: four 16x16 windows, three of them padded
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([10]), torch.randn_like(x)), torch.zeros_like(x))
        out = perturbed(model)(x, torch.tensor([10]), torch.randn_like(x))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().mean() > 0
