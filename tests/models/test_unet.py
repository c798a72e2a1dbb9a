"""ConditionalUNet: shapes in 2D/3D, zero init, conditioning and time dependence, batch independence,
gradient checkpointing, and the errors a user sees for inconsistent options or inputs."""

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
