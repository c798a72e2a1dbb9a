"""Conditioning modes of the U-Net (concat, crossattn, hybrid, adaln), classifier-free guidance and windowed
attention: every mode in 2D and 3D, the condition matters, a dropped condition is the unconditional branch,
AdaLN-Zero blocks start as identities, guidance scale 1 is the conditional model."""

import math

import pytest
import torch

from cdm4mi.config import load_config
from cdm4mi.diffusion import classifier_free_guidance
from cdm4mi.models.attention import Attention, GridAttention, from_windows, to_windows
from cdm4mi.models.conditioning import ImageTokenizer
from cdm4mi.models.unet import ConditionalUNet, ResBlock
from cdm4mi.training.module import DiffusionModule

TINY = dict(base_channels=16, norm_groups=8, channel_mult=[1, 2], attention_levels=[False, True], num_head_channels=8,
            num_res_blocks=1, token_dim=16, cond_patch_size=4)

# mode -> (extra constructor options, the parts of cond it takes)
MODES = {
    "concat": (dict(vector_dim=3), ("image", "vector")),
    "crossattn": (dict(in_channels=1, vector_dim=3), ("image", "vector")),
    "hybrid": (dict(num_classes=4), ("image", "label")),
    "adaln": (dict(vector_dim=3), ("image", "vector")),
    "adaln_labels_only": (dict(in_channels=1, num_classes=4), ("label",)),
}


def build(mode: str, spatial_dims: int = 2, **overrides) -> ConditionalUNet:
    options, _ = MODES[mode]
    torch.manual_seed(0)
    key = "adaln" if mode.startswith("adaln") else mode
    return ConditionalUNet(spatial_dims=spatial_dims, conditioning_key=key, **{**TINY, **options, **overrides})


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every weight, so zero-initialised layers stop hiding the condition paths."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def condition(mode: str, batch: int, spatial: tuple[int, ...], seed: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    full = {"image": torch.randn(batch, 1, *spatial, generator=generator),
            "vector": torch.randn(batch, 3, generator=generator),
            "label": torch.randint(0, 4, (batch,), generator=generator)}
    return {key: full[key] for key in MODES[mode][1]}


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_in_2d_and_3d_and_its_condition_matters(mode, spatial):
    model = perturbed(build(mode, spatial_dims=len(spatial)))
    x = torch.randn(2, 1, *spatial, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 500])
    cond = condition(mode, 2, spatial)
    out = model(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    for part in cond:  # each part of the condition changes the output, and only of its own sample
        changed = dict(cond)
        changed[part] = condition(mode, 2, spatial, seed=5)[part].clone()
        changed[part][1] = cond[part][1]
        moved = model(x, t, changed)
        assert (moved[0] - out[0]).abs().max() > 1e-4, part
        torch.testing.assert_close(moved[1], out[1])
    unconditional = model(x, t, None)
    assert unconditional.shape == x.shape and (unconditional - out).abs().max() > 1e-4


@pytest.mark.parametrize("mode", list(MODES))
def test_a_dropped_condition_is_the_unconditional_branch(mode):
    spatial = (16, 16)
    model = perturbed(build(mode, cond_drop_prob=1.0))
    x, t, cond = torch.randn(3, 1, *spatial), torch.tensor([5, 50, 500]), condition(mode, 3, spatial)
    unconditional = model.eval()(x, t, None)
    dropped = model.train()(x, t, cond)  # dropout 0: train mode differs only by dropping the condition
    torch.testing.assert_close(dropped, unconditional, rtol=1e-5, atol=1e-5)
    model.condition.cond_drop_prob = 0.5
    conditional = model.eval()(x, t, cond)
    torch.manual_seed(4)
    mixed = model.train()(x, t, cond)
    for row in range(3):  # each sample is either kept or dropped whole
        kept = torch.allclose(mixed[row], conditional[row], atol=1e-5)
        assert kept or torch.allclose(mixed[row], unconditional[row], atol=1e-5)


@pytest.mark.parametrize("in_channels, out_channels", [(16, 16), (16, 32)])
def test_adaln_zero_residual_blocks_are_identities_at_initialisation(in_channels, out_channels):
    torch.manual_seed(0)
    block = ResBlock(2, in_channels, out_channels, emb_dim=24, dropout=0.0, norm_groups=8, adaln=True)
    x, emb = torch.randn(2, in_channels, 8, 8), 10 * torch.randn(2, 24)
    torch.testing.assert_close(block(x, emb), block.skip(x))
    model = build("adaln")
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert blocks and all(block.adaln for block in blocks)
    # ...and they learn: after one step on a loss the gates and modulations move off zero.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        spatial = (16, 16)
        out = model.train()(torch.randn(2, 1, *spatial), torch.tensor([1, 2]), condition("adaln", 2, spatial))
        (out - 1).square().mean().backward()
        optimizer.step()
    assert all(block.emb_proj[1].weight.abs().max() > 0 for block in blocks)


def test_guidance_scale_one_is_the_conditional_model_and_other_scales_extrapolate():
    model = perturbed(build("adaln", cond_drop_prob=0.1))
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor([5, 50]), condition("adaln", 2, (16, 16))
    assert classifier_free_guidance(model, 1.0) is model
    conditional, unconditional = model(x, t, cond), model(x, t, None)
    for scale in (0.0, 3.0):
        guided = classifier_free_guidance(model, scale)(x, t, cond)
        torch.testing.assert_close(guided, unconditional + scale * (conditional - unconditional))
    with pytest.raises(ValueError, match="guidance needs a condition"):
        classifier_free_guidance(model, 3.0)(x, t, None)


def test_lightning_module_samples_with_guidance_only_when_trained_for_it():
    config = load_config(None, ["network.name=unet", "data.name=gaussian_mixture"]).model_dump()
    config["network"].update(TINY, conditioning_key="adaln", in_channels=1, num_classes=4, cond_drop_prob=0.2)
    module = DiffusionModule(config)
    x, cond = torch.randn(2, 1, 16, 16), {"label": torch.tensor([0, 3])}
    plain = module.sample(x, cond, steps=2)
    guided = module.sample(x, cond, steps=2, guidance_scale=2.0)
    assert plain.shape == guided.shape == x.shape
    config["network"]["cond_drop_prob"] = 0.0
    with pytest.raises(ValueError, match="sampling.guidance_scale: this network was trained without condition"):
        DiffusionModule(config).sample(x, cond, steps=2, guidance_scale=2.0)


@pytest.mark.parametrize("mode, cond, message", [
    ("adaln", {"image": torch.zeros(2, 1, 16, 16)}, r"cond\['vector'\]: network 'adaln' expects shape \(2, 3\)"),
    ("adaln_labels_only", {"label": torch.tensor([0, 4])}, r"cond\['label'\]: class indices must lie in \[0, 3\]"),
    ("adaln_labels_only", {"label": torch.tensor([0, 1]), "image": torch.zeros(2, 1, 16, 16)},
     r"cond\['image'\]: given, but network.cond_channels is 0"),
    ("concat", {"image": torch.zeros(2, 1, 16, 16), "vector": torch.zeros(2, 3), "mask": torch.zeros(2)},
     r"cond: unknown keys \['mask'\]"),
    ("concat", [torch.zeros(2, 1, 16, 16)], "cond: expected None, a conditioning image tensor or a dict"),
])
def test_malformed_conditions_are_named(mode, cond, message):
    with pytest.raises(ValueError, match=message):
        build(mode)(torch.zeros(2, 1, 16, 16), torch.tensor([1, 2]), cond)


@pytest.mark.parametrize("spatial, window", [((8, 8), 4), ((7, 10), 4), ((5, 6, 7), 3), ((6, 6), 16)])
def test_windows_round_trip_and_mask_only_padding(spatial, window):
    grid = torch.randn(2, 5, *spatial)
    tokens, mask = to_windows(grid, window)
    windows = math.prod(math.ceil(s / min(s, window)) for s in spatial)
    assert tokens.shape == (2 * windows, math.prod(min(s, window) for s in spatial), 5)
    torch.testing.assert_close(from_windows(tokens, spatial, window), grid)
    padded = any(s % min(s, window) for s in spatial)
    assert (mask is not None) == padded
    if padded:
        assert mask.shape == tokens.shape[:2] and mask.any(dim=1).all()
        assert int(mask.sum()) == 2 * math.prod(spatial)


def test_windowed_attention_equals_attention_within_each_window():
    torch.manual_seed(0)
    block = GridAttention(16, 8, 8, window=4)
    with torch.no_grad():
        block.self_attention.out.weight.normal_()
    h = torch.randn(1, 16, 6, 8)  # rows split 4 + 2 (padded), columns 4 + 4
    out = block(h)
    normed = block.norm(h)
    for rows in (slice(0, 4), slice(4, 6)):
        for cols in (slice(0, 4), slice(4, 8)):
            window = normed[:, :, rows, cols]
            tokens = window.flatten(2).transpose(1, 2)
            expected = h[:, :, rows, cols] + block.self_attention(tokens).transpose(1, 2).reshape(window.shape)
            torch.testing.assert_close(out[:, :, rows, cols], expected, rtol=1e-4, atol=1e-5)
    global_block = GridAttention(16, 8, 8, window=None)
    global_block.load_state_dict(block.state_dict())
    small = torch.randn(2, 16, 4, 4)  # the window covers the whole grid: the same as global attention
    torch.testing.assert_close(block(small), global_block(small))


def test_image_tokens_stay_within_the_budget_at_any_size():
    tokenizer = ImageTokenizer(2, 1, token_dim=16, patch_size=8, max_tokens=256)
    assert tokenizer(torch.zeros(1, 1, 64, 64)).shape == (1, 64, 16)
    assert tokenizer(torch.zeros(1, 1, 512, 512)).shape == (1, 256, 16)  # 64x64 patches pooled to 16x16
    assert tokenizer(torch.zeros(1, 1, 512, 256)).shape[1] <= 256
    volume = ImageTokenizer(3, 1, token_dim=16, patch_size=4, max_tokens=64)
    assert volume(torch.zeros(1, 1, 64, 64, 64)).shape[1] <= 64
    with pytest.raises(ValueError, match="smaller than network.cond_patch_size 8"):
        tokenizer(torch.zeros(1, 1, 4, 64))


def test_cross_attention_to_a_single_null_token_equals_attention_to_many_copies():
    torch.manual_seed(0)
    attention = Attention(16, 8, context_channels=12)
    with torch.no_grad():
        attention.out.weight.normal_()
    queries, null = torch.randn(2, 10, 16), torch.randn(12)
    one = attention(queries, null.expand(2, 1, -1))
    many = attention(queries, null.expand(2, 7, -1))
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)
