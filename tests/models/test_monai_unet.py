"""monai_unet: MONAI's DiffusionModelUNet behind cdm4mi's interface. Shapes in 2D/3D for every conditioning
mode, the condition and guidance dropout as with unet, the wrapper adding nothing to MONAI's network, and
the errors for what MONAI cannot do."""

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from cdm4mi.models import build_backbone
from cdm4mi.models.monai_unet import MonaiUNet

TINY = {"base_channels": 16, "norm_groups": 8, "channel_mult": [1, 2], "attention_levels": [False, True],
        "num_head_channels": 8, "num_res_blocks": 1, "token_dim": 16, "cond_patch_size": 4}
# Per conditioning mode: constructor options, and what a batch's cond holds besides the image.
MODES = {
    "concat": ({}, {}),
    "crossattn": ({"in_channels": 1, "cond_channels": 1}, {}),
    "hybrid": ({}, {}),
    None: ({"in_channels": 1}, None),
    "concat+metadata": ({"vector_dim": 3, "num_classes": 4}, {"vector": (3,), "label": 4}),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and when another job keeps the other core busy every
    operator waits for it (about 10 ms each: seconds per forward); restore the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(mode: str | None, **overrides) -> MonaiUNet:
    """A small monai_unet for ``mode`` (a MODES key), every weight perturbed so that zero-initialised layers
    (MONAI's output convolution, residual branches) stop hiding the input, time and condition paths."""
    options, _ = MODES[mode]
    key = "concat" if mode == "concat+metadata" else mode
    torch.manual_seed(0)
    model = build_backbone("monai_unet", **{**TINY, "conditioning_key": key, **options, **overrides})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def batch(mode: str | None, spatial: tuple[int, ...], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Noisy x [2, 1, *spatial], timesteps [2] and a condition of ``mode``'s form."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, *spatial, generator=generator)
    _, extra = MODES[mode]
    if extra is None:
        return x, torch.tensor([10, 110]), None
    cond = {"image": torch.randn(2, 1, *spatial, generator=generator)}
    if "vector" in extra:
        cond["vector"] = torch.randn(2, *extra["vector"], generator=generator)
    if "label" in extra:
        cond["label"] = torch.randint(0, extra["label"], (2,), generator=generator)
    return x, torch.tensor([10, 110]), cond


def other(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same condition with every part changed (labels shifted by one class of MODES' 4)."""
    return {key: -value if value.is_floating_point() else (value + 1) % 4 for key, value in cond.items()}


@pytest.mark.parametrize("spatial", [(16, 16), (8, 16, 8)])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_in_2d_and_3d_and_its_condition_matters(mode, spatial):
    model = tiny(mode, spatial_dims=len(spatial))
    x, t, cond = batch(mode, spatial)
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == (2, 1, *spatial) and torch.isfinite(out).all()
        assert not torch.allclose(out, model(x, t + 300, cond), atol=1e-4)
        if cond is not None:
            assert not torch.allclose(out, model(x, t, other(cond)), atol=1e-4)
            assert not torch.allclose(out, model(x, t, None), atol=1e-4)
    if len(spatial) == 3:
        assert not any(isinstance(module, torch.nn.Conv2d) for module in model.modules())


@pytest.mark.parametrize("mode", ["concat", "crossattn", "hybrid", "concat+metadata"])
def test_a_dropped_condition_is_the_unconditional_branch(mode):
    model = tiny(mode, cond_drop_prob=1.0)
    assert model.cond_drop_prob == 1.0
    x, t, cond = batch(mode, (16, 16))
    with torch.no_grad():
        unconditional = model(x, t, None)
        dropped = model.train()(x, t, cond)
    torch.testing.assert_close(dropped, unconditional)
    assert unconditional.abs().mean() > 1e-3


@pytest.mark.parametrize("mode", ["concat", "crossattn", "hybrid", "concat+metadata"])
def test_the_wrapper_adds_nothing_to_monais_network(mode):
    """Same weights in a DiffusionModelUNet built here from MONAI's own options, given the stacked input and
    the condition's tokens / embedding: the same output. So the option mapping is exact (strict load) and the
    wrapper only encodes the condition."""
    model = tiny(mode, spatial_dims=3)
    x, t, cond = batch(mode, (8, 16, 8))
    uses_tokens = mode in ("crossattn", "hybrid")
    monai = DiffusionModelUNet(spatial_dims=3, in_channels=model.in_channels, out_channels=1, num_res_blocks=1,
                               channels=[16, 32], attention_levels=[False, True], norm_num_groups=8,
                               num_head_channels=8, with_conditioning=uses_tokens,
                               cross_attention_dim=16 if uses_tokens else None,
                               num_class_embeds=1 if mode == "concat+metadata" else None, use_flash_attention=True)
    if mode == "concat+metadata":
        monai.class_embedding = torch.nn.Identity()
    monai.load_state_dict(model.unet.state_dict(), strict=True)
    monai.eval()
    with torch.no_grad():
        encoded = model.condition(cond, x)
        stacked = torch.cat([x, cond["image"]], dim=1) if mode != "crossattn" else x
        expected = monai(stacked, t, context=encoded.tokens, class_labels=encoded.embedding)
        torch.testing.assert_close(model(x, t, cond), expected, rtol=0, atol=0)


def test_scalar_and_fractional_timesteps_broadcast_to_the_batch():
    model = tiny("concat")
    x, _, cond = batch("concat", (16, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x, 37.5, cond), model(x, torch.tensor([37.5, 37.5]), cond))


def test_default_options_build_from_the_registry_like_unet():
    model = build_backbone("monai_unet")
    assert isinstance(model, MonaiUNet) and isinstance(model.unet, DiffusionModelUNet)
    assert list(model.unet.block_out_channels) == [64, 128, 256] and model.size_multiple == 4
    # unet's defaults: ~16M parameters; MONAI's blocks (no FiLM scale) make this one a little smaller.
    assert 12e6 < sum(p.numel() for p in model.parameters()) < 20e6
    assert model(torch.zeros(1, 1, 8, 8), 0, torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"conditioning_key": "adaln"}, "network.conditioning_key: 'adaln' is not available with monai_unet"),
    ({"conditioning_key": "film"}, "network.conditioning_key"),
    ({"attention_window": 8}, "network.attention_window: monai_unet attends globally"),
    ({"gradient_checkpointing": True}, "network.gradient_checkpointing"),
    ({"dropout": 0.1}, "network.dropout: monai_unet has dropout only in its cross-attention"),
    ({"num_head_channels": 12}, "network.num_head_channels: 12 does not divide attention level width 32"),
    ({"attention_levels": [False, False], "num_head_channels": 12}, "network.num_head_channels"),  # middle block
    ({"norm_groups": 6}, "network.norm_groups: 6 does not divide level width 16"),
    ({"attention_levels": [True]}, "network.attention_levels: needs one flag per channel_mult level"),
    ({"spatial_dims": 1}, "network.spatial_dims"),
    ({"base_channels": "wide"}, "network.base_channels"),
    ({"colour": 1}, "network.colour: unknown option for 'monai_unet'"),
])
def test_options_monai_cannot_take_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_backbone("monai_unet", **{**TINY, **overrides})


def test_inconsistent_inputs_are_named():
    model = tiny("concat")
    x, t, cond = batch("concat", (16, 16))
    with pytest.raises(ValueError, match=r"x: spatial size \(16, 15\) must be divisible by 2 .*pad to \(16, 16\)"):
        model(x[..., :15], t, None)
    with pytest.raises(ValueError, match="network.spatial_dims: model is 2D"):
        model(x[:, :, None], t, cond)
    with pytest.raises(ValueError, match=r"t: expected a scalar or 2 timesteps"):
        model(x, torch.tensor([1, 2, 3]), cond)
    with pytest.raises(ValueError, match=r"cond\['image'\]"):
        model(x, t, torch.zeros(2, 2, 16, 16))
