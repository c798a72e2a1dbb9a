"""ConditionalUNet: shapes in 2D/3D, zero init, conditioning and time dependence, batch independence,
gradient checkpointing, the pixel-unshuffle stem and head, and the errors a user sees for inconsistent options or inputs."""

import pytest
import torch

from cdm4mi.models import unet as unet_module
from cdm4mi.models.attention import GridAttention
from cdm4mi.models.registry import BACKBONES
from cdm4mi.models.unet import ConditionalUNet

TINY = dict(base_channels=16, norm_groups=8, channel_mult=[1, 2], attention_levels=[False, True], num_head_channels=8,
            num_res_blocks=1)


def tiny(**overrides) -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(**{**TINY, **overrides})


def perturbed(model: ConditionalUNet) -> ConditionalUNet:
    """Add noise to every weight so zero-initialised layers stop hiding the input, time and cond paths."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def inputs(batch: int = 2, spatial: tuple[int, ...] = (16, 16)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 1, *spatial, generator=generator)
    cond = torch.randn(batch, 1, *spatial, generator=generator)
    return x, torch.arange(batch) * 100 + 10, cond


def test_output_shapes_2d_and_3d():
    x, t, cond = inputs(2, (16, 16))
    out = perturbed(tiny(out_channels=3, cond_channels=1))(x, t, cond)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    volume_x, volume_t, volume_cond = inputs(2, (8, 16, 12))
    volume_model = perturbed(tiny(spatial_dims=3))
    out = volume_model(volume_x, volume_t, volume_cond)
    assert out.shape == (2, 1, 8, 16, 12) and torch.isfinite(out).all()
    assert not any(isinstance(m, torch.nn.Conv2d) for m in volume_model.modules())


def test_default_config_from_registry():
    model = BACKBONES.build("unet")
    assert isinstance(model, ConditionalUNet)
    # ADM-style widths 64/128/256 with 2 res blocks: ~16M parameters (MONAI's same design: ~15M).
    assert 12e6 < sum(p.numel() for p in model.parameters()) < 20e6
    # Attention only at the deepest level: 2 encoder blocks + middle + 3 decoder blocks.
    assert sum(isinstance(m, GridAttention) for m in model.modules()) == 6
    assert model.conditioning_key == "concat" and model.in_channels == 2 and model.size_multiple == 4
    assert model(*inputs(1, (8, 8))[:2], cond=torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_output_is_zero_at_init_and_moves_after_one_step():
    model = tiny()
    x, t, cond = inputs()
    assert torch.equal(model(x, t, cond), torch.zeros(2, 1, 16, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(model(x, t, cond), torch.ones(2, 1, 16, 16)).backward()
    optimizer.step()
    assert model(x, t, cond).abs().mean() > 1e-4


def test_output_depends_on_cond_and_t():
    model = perturbed(tiny())
    x, t, cond = inputs()
    reference = model(x, t, cond)
    assert (model(x, t, cond + 1.0) - reference).abs().mean() > 1e-3
    assert (model(x, t + 500, cond) - reference).abs().mean() > 1e-3
    torch.testing.assert_close(model(x, t, cond), reference)  # deterministic in eval mode


def test_scalar_and_float_timesteps_broadcast_to_the_batch():
    model = perturbed(tiny())
    x, _, cond = inputs()
    expected = model(x, torch.tensor([7, 7]), cond)
    for t in (7, 7.0, torch.tensor(7)):
        torch.testing.assert_close(model(x, t, cond), expected)
    with pytest.raises(ValueError, match=r"t: expected a scalar or 2 timesteps"):
        model(x, torch.tensor([1, 2, 3]), cond)


def test_samples_do_not_mix_across_the_batch():
    model = perturbed(tiny())
    x, t, cond = inputs(3)
    out = model(x, t, cond)
    x2, t2, cond2 = x.clone(), t.clone(), cond.clone()
    x2[1], t2[1], cond2[1] = -x[1], 999, torch.randn_like(cond[1])
    changed = model(x2, t2, cond2)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]], rtol=1e-5, atol=1e-6)
    assert (changed[1] - out[1]).abs().mean() > 1e-3
    torch.testing.assert_close(model(x[:1], t[:1], cond[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(monkeypatch):
    calls, real_checkpoint = [], unet_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(args[0])
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    plain, checkpointed = tiny(dropout=0.1), tiny(dropout=0.1, gradient_checkpointing=True)
    checkpointed.load_state_dict(perturbed(plain).state_dict())
    x, t, cond = inputs()
    outputs, gradients = [], []
    for model in (plain.train(), checkpointed.train()):
        torch.manual_seed(3)  # same dropout masks; checkpoint must replay them when recomputing
        out = model(x, t, cond)
        out.square().mean().backward()
        outputs.append(out)
        gradients.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1])
    for plain_grad, checkpointed_grad in zip(*gradients):
        torch.testing.assert_close(plain_grad, checkpointed_grad)
    assert len(calls) == len(checkpointed.encoder) + len(checkpointed.middle) + len(checkpointed.decoder)
    calls.clear()
    with torch.no_grad():
        checkpointed(x, t, cond)
    assert not calls  # nothing to save when no graph is built


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(spatial_dims=1), "network.spatial_dims: must be 2 or 3"),
        (dict(attention_levels=[True]), r"network.attention_levels: needs one flag per channel_mult level \(2\)"),
        (dict(norm_groups=12), "network.norm_groups: 12 does not divide level width 16"),
        (dict(num_head_channels=12), "network.num_head_channels: 12 does not divide attention level width 32"),
        (dict(conditioning_key="film"), "network.conditioning_key: must be one of"),
        (dict(conditioning_key="crossattn", attention_levels=[False, False]), "network.attention_levels: conditioning_key"),
        (dict(conditioning_key=None, in_channels=1, vector_dim=3), "network.conditioning_key: is None .* but a conditioning"),
        (dict(in_channels=1), "network.conditioning_key: 'concat' stacks a conditioning image, but it has 0"),
        (dict(attention_window=0), "network.attention_window: must be >= 1"),
        (dict(cond_drop_prob=1.5), r"network.cond_drop_prob: must lie in \[0, 1\]"),
        (dict(channel_mult=[]), "network.channel_mult"),
        (dict(dropout=1.0), r"network.dropout: must lie in \[0, 1\)"),
    ],
)
def test_inconsistent_options_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_inconsistent_inputs_are_rejected():
    model = tiny(channel_mult=[1, 2, 2], attention_levels=[False, False, True])
    x, t, cond = inputs()
    with pytest.raises(ValueError, match=r"cond\['image'\]: network 'concat' expects shape \(2, 1, 16, 16\)"):
        model(x, t, cond[..., :8])
    with pytest.raises(ValueError, match=r"x: spatial size \(18, 16\) must be divisible by 4 .*pad to \(20, 16\)"):
        model(torch.zeros(2, 1, 18, 16), t, torch.zeros(2, 1, 18, 16))
    with pytest.raises(ValueError, match=r"cond\['image'\]: .* \(network.cond_channels = 1\), got \(2, 2, 16, 16\)"):
        model(x, t, torch.cat([cond, cond], dim=1))
    with pytest.raises(ValueError, match=r"network.in_channels: is 2 but x \(2\) \+ cond \(1\) give 3 channels"):
        model(torch.cat([x, x], dim=1), t, cond)
    with pytest.raises(ValueError, match="network.spatial_dims: model is 2D"):
        model(x[None], t, cond[None])


def test_unconditional_model_takes_no_cond():
    model = perturbed(tiny(in_channels=1, conditioning_key=None))
    x, t, cond = inputs()
    assert model(x, t).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="cond: network.conditioning_key is None"):
        model(x, t, cond)


def test_registry_validates_config_types():
    with pytest.raises(ValueError, match="network.base_channels"):
        BACKBONES.build("unet", base_channels="abc")
    with pytest.raises(ValueError, match="network.conditioning_key"):
        BACKBONES.build("unet", conditioning_key="film")
    model = BACKBONES.build("unet", **{**TINY, "channel_mult": ["1", "2"], "attention_levels": [0, 1]})
    assert model(*inputs()).shape == (2, 1, 16, 16)


def test_condition_skip_returns_the_condition_at_init_and_learns_the_correction():
    x, t, cond = inputs(2, (16, 16))
    model = tiny(condition_skip=True)
    assert torch.equal(model(x, t, cond), cond)  # zero head: the untrained model hands back its input
    slab = torch.randn(2, 3, 16, 16)  # a 2.5D slab: the centre channel is the slice itself
    assert torch.equal(tiny(in_channels=4, condition_skip=True)(x, t, slab), slab[:, 1:2])
    trained = perturbed(tiny(condition_skip=True))
    plain = perturbed(tiny())
    assert torch.allclose(trained(x, t, cond), plain(x, t, cond) + cond, atol=1e-6)
    with pytest.raises(ValueError, match="network.condition_skip: needs a conditioning image"):
        tiny(conditioning_key="crossattn", condition_skip=True)


def test_a_registered_backbone_must_keep_the_protocol():
    """The trainer and inference read size_multiple and cond_drop_prob from every backbone: one without them is
    refused when it is built, not when a scan is padded."""
    from torch import nn

    from cdm4mi.models import Backbone, build_backbone

    @BACKBONES.register("no_protocol_for_test")
    class Bare(nn.Module):
        def __init__(self, width: int = 1):
            super().__init__()

        def forward(self, x, t, cond=None):
            return x

    try:
        with pytest.raises(TypeError, match="size_multiple and cond_drop_prob"):
            build_backbone("no_protocol_for_test")
    finally:
        BACKBONES._entries.pop("no_protocol_for_test")
    for name, options in (("unet", TINY), ("residual_mlp", {"dim": 4, "hidden_dim": 8}), ("simple_score", {})):
        assert isinstance(build_backbone(name, **options), Backbone)


def test_space_to_depth_is_pixel_unshuffle_and_round_trips_in_2d_and_3d():
    from cdm4mi.models.inputs import depth_to_space, space_to_depth

    image = torch.randn(2, 3, 8, 12)
    folded = space_to_depth(image, 2)
    torch.testing.assert_close(folded, torch.nn.functional.pixel_unshuffle(image, 2), rtol=0, atol=0)
    # channel order (channel, row offset, column offset), as a strided convolution's weight flattens
    assert folded[1, 2 * 4 + 2 * 1 + 1, 3, 5] == image[1, 2, 2 * 3 + 1, 2 * 5 + 1]
    torch.testing.assert_close(depth_to_space(folded, 2), image, rtol=0, atol=0)
    torch.testing.assert_close(depth_to_space(folded, 2), torch.nn.functional.pixel_shuffle(folded, 2), rtol=0, atol=0)
    volume = torch.randn(1, 2, 6, 9, 3)
    folded = space_to_depth(volume, 3)
    assert folded.shape == (1, 2 * 27, 2, 3, 1)
    assert folded[0, 27 + 9 * 2 + 3 * 1 + 0, 1, 2, 0] == volume[0, 1, 3 + 2, 6 + 1, 0]
    torch.testing.assert_close(depth_to_space(folded, 3), volume, rtol=0, atol=0)


def test_pixel_unshuffle_runs_the_levels_on_a_smaller_image_in_2d_and_3d():
    x, t, cond = inputs(2, (16, 16))
    model = perturbed(tiny(pixel_unshuffle=2))
    assert model.size_multiple == 4 and model.conv_in.in_channels == 2 * 4 and model.head[-1].out_channels == 4
    sizes = []
    model.conv_in.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[2:])))
    out = model(x, t, cond)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all() and sizes == [(8, 8)]
    volume_x, volume_t, volume_cond = inputs(2, (8, 16, 12))
    volume_model = perturbed(tiny(spatial_dims=3, pixel_unshuffle=2))
    assert volume_model.conv_in.in_channels == 2 * 8
    assert volume_model(volume_x, volume_t, volume_cond).shape == (2, 1, 8, 16, 12)
    with pytest.raises(ValueError, match=r"x: spatial size \(18, 16\) must be divisible by 4 \(pixel_unshuffle \* 2"):
        model(torch.zeros(2, 1, 18, 16), t, torch.zeros(2, 1, 18, 16))


def test_pixel_unshuffle_is_the_plain_unet_on_the_unshuffled_image():
    """The stem and head only rearrange pixels: a pixel_unshuffle=2 U-Net is a plain U-Net (same weights) that
    takes the unshuffled noisy image and condition and whose output is shuffled back."""
    from cdm4mi.models.inputs import depth_to_space, space_to_depth

    x, t, cond = inputs(2, (16, 16))
    folded_model = perturbed(tiny(pixel_unshuffle=2, vector_dim=2))
    plain = tiny(in_channels=8, out_channels=4, cond_channels=4, vector_dim=2)
    plain.load_state_dict(folded_model.state_dict())  # same parameter shapes: conv_in 8 -> 16, head 16 -> 4
    vector = torch.randn(2, 2)
    expected = depth_to_space(plain.eval()(space_to_depth(x, 2), t,
                                           {"image": space_to_depth(cond, 2), "vector": vector}), 2)
    torch.testing.assert_close(folded_model(x, t, {"image": cond, "vector": vector}), expected)


def test_pixel_unshuffle_keeps_condition_skip_and_trains():
    x, t, cond = inputs(2, (16, 16))
    model = tiny(pixel_unshuffle=2, condition_skip=True, conditioning_key="adaln", vector_dim=2)
    condition = {"image": cond, "vector": torch.ones(2, 2)}
    assert torch.equal(model(x, t, condition), cond)  # zero head: still the low-dose input at full resolution
    perturbed(model).train()
    (model(x, t, condition) - x).square().mean().backward()
    unused = {"condition.null_embedding"}  # only a dropped condition uses it
    for name, parameter in model.named_parameters():
        if name not in unused:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="network.pixel_unshuffle"):
        BACKBONES.build("unet", **TINY, pixel_unshuffle=0)
    assert BACKBONES.build("unet", **TINY, pixel_unshuffle="2").size_multiple == 4
