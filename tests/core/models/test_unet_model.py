"""The denoising U-Net: architecture of the presets, condition handling, CFG, extra embedding."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, SpatialTransformer

from land_core.models import LandUNet, UNetConfig, build_unet, count_parameters, pool_condition, unet_preset



def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh MONAI diffusion nets output exactly zero (zero-initialised last layers): give them weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def unet() -> LandUNet:
    return randomized(build_unet(unet_preset("tiny")))


def condition_volume(batch: int = 1, texture: float = 0.2) -> torch.Tensor:
    """Full-resolution 64^3 LAND encoding: a lung box with one small nodule."""
    c = torch.zeros(batch, 1, 64, 64, 64)
    c[:, :, 8:56, 12:40, 8:56] = 0.5
    c[:, :, 30:34, 20:24, 30:34] = texture
    return c


def test_land_preset_architecture():
    cfg = unet_preset("land")
    assert cfg.channels == (128, 384, 512, 512, 512) and cfg.num_res_blocks == 2
    assert cfg.attention_levels == (False, False, True, False, False)
    assert cfg.condition_channels == 1 and cfg.pooled_condition_channels == 2
    with torch.device("meta"):
        net = build_unet(cfg)
        assert count_parameters(net) == 284_978_884
        assert count_parameters(build_unet(unet_preset("demo"))) == 12_239_812
    assert net.conv_in.conv.in_channels == 4 + 2
    # attention: 2 blocks at level 2 down, 2 at level 2 up, 1 in the middle; all with cross-attention
    transformers = [m for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert len(transformers) == 5
    assert all(t.transformer_blocks[0].attn2.to_k.in_features == cfg.cross_attention_dim for t in transformers)
    # additive skips: no residual block ever sees concatenated channels
    resnets = [m for m in net.modules() if isinstance(m, DiffusionUNetResnetBlock)]
    assert len(resnets) == 2 * 5 + 2 + 2 * 5
    assert {r.channels for r in resnets} <= set(cfg.channels)


def test_config_round_trip_and_strictness():
    cfg = unet_preset("demo", extra_embedding_dim=16, condition_mode="nodule")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        UNetConfig.from_dict({**cfg.to_dict(), "attention": [True]})
    with pytest.raises(ValueError, match="condition_mode"):
        UNetConfig.from_dict({**cfg.to_dict(), "condition_mode": "lungs"})
    with pytest.raises(ValueError, match="true or false"):
        UNetConfig.from_dict({**cfg.to_dict(), "mid_attention": 1})
    with pytest.raises(ValueError, match="one entry per level"):
        UNetConfig(attention_levels=(True,))
    assert unet_preset("tiny", condition_mode="unconditional").condition_channels == 0
    assert unet_preset("tiny", condition_pooling="max").pooled_condition_channels == 1


def test_pool_condition_keeps_ground_glass_next_to_lung():
    c = torch.zeros(1, 1, 8, 8, 8)
    c[..., :4, :4, :4] = 0.5  # cell 0: lung with one ground-glass voxel (texture 1 -> 0.2)
    c[..., 1, 1, 1] = 0.2
    c[..., 4:, :4, :4] = 1.0  # cell 1: solid nodule
    c[..., :4, 4:, :4] = 0.5  # cell 2: lung only
    plain = pool_condition(c, 4, "max")
    split = pool_condition(c, 4, "max_split")
    assert plain.shape == (1, 1, 2, 2, 2) and split.shape == (1, 2, 2, 2, 2)
    assert plain[0, 0, 0, 0, 0] == 0.5  # the plain max loses the ground glass under the lung value
    assert torch.equal(split[0, :, 0, 0, 0], torch.tensor([0.5, 0.2]))
    assert torch.equal(split[0, :, 1, 0, 0], torch.tensor([1.0, 1.0]))
    assert torch.equal(split[0, :, 0, 1, 0], torch.tensor([0.5, 0.0]))
    assert torch.equal(split[0, :, 1, 1, 1], torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="divisible"):
        pool_condition(torch.zeros(1, 1, 6, 8, 8), 4)


def test_forward_shapes_values_and_condition_forms(unet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    cond = condition_volume(2)
    with torch.no_grad():
        v = unet(x, t, cond)
        assert v.shape == x.shape and torch.isfinite(v).all() and v.abs().mean() > 1e-3
        assert torch.equal(v, unet(x, t, cond))  # deterministic
        pooled = pool_condition(cond, 4)
        assert torch.allclose(unet(x, t, pooled), v, atol=1e-6)  # pre-pooled features
        latent_grid = torch.nn.functional.max_pool3d(cond, 4)  # the raw encoding on the latent grid
        assert torch.allclose(unet(x, t, latent_grid), unet(x, t, pool_condition(latent_grid, 1)), atol=1e-6)
        assert torch.allclose(unet(x, t, cond[:1]), v, atol=1e-6)  # batch-1 condition broadcasts
        # the condition matters: texture, null condition, and the timestep all change the output
        assert (unet(x, t, condition_volume(2, texture=1.0)) - v).abs().max() > 1e-3
        null = unet(x, t, None)
        assert (null - v).abs().max() > 1e-3
        assert (unet(x, torch.tensor([11, 700]), cond)[0] - v[0]).abs().max() > 1e-4
        # per-sample condition dropout = the null condition for the dropped samples only
        dropped = unet(x, t, cond, drop_condition=torch.tensor([True, False]))
        assert torch.allclose(dropped[0], null[0], atol=1e-6) and torch.allclose(dropped[1], v[1], atol=1e-6)
        # an int timestep broadcasts
        assert torch.allclose(unet(x, 5, cond), unet(x, torch.tensor([5, 5]), cond), atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 16"):
        unet(torch.zeros(1, 4, 8, 8, 8), 0, None)
    with pytest.raises(ValueError, match="fits neither"):
        unet(x, t, torch.zeros(2, 1, 32, 32, 32))


def test_guided_model_fn_is_one_batched_cfg_pass(unet):
    x = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300, 300])
    cond = condition_volume(1)
    with torch.no_grad():
        plain = unet.make_model_fn(cond, (16, 16, 16))
        assert torch.allclose(plain(x, t), unet(x, t, cond), atol=1e-6)
        guided = unet.make_model_fn(cond, (16, 16, 16), guidance_scale=3.0)
        expected = unet(x, t, None) + 3.0 * (unet(x, t, cond) - unet(x, t, None))
        assert torch.allclose(guided(x, t), expected, atol=1e-5)
        uncond_fn = unet.make_model_fn(None, (16, 16, 16))
        assert torch.allclose(uncond_fn(x, t), unet(x, t, None), atol=1e-6)


def test_extra_embedding_and_unconditional_mode():
    net = randomized(build_unet(unet_preset("tiny", extra_embedding_dim=6)), seed=3)
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    e = torch.randn(1, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = net(x, 100, None)
        with_e = net(x, 100, None, extra_embedding=e)
        assert (with_e - base).abs().max() > 1e-4
        # dropping the condition also drops the extra embedding
        assert torch.allclose(net(x, 100, None, extra_embedding=e, drop_condition=torch.tensor([True])), base, atol=1e-6)
    with pytest.raises(ValueError, match="extra_embedding must be"):
        net(x, 100, None, extra_embedding=torch.zeros(1, 5))

    uncond = randomized(build_unet(unet_preset("tiny", condition_mode="unconditional")), seed=6)
    assert uncond.tokenizer is None and uncond.conv_in.conv.in_channels == 4
    with torch.no_grad():
        v = uncond(x, 50)
        assert torch.allclose(uncond.make_model_fn(None, (16, 16, 16))(x, torch.tensor([50])), v, atol=1e-6)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, 50, condition_volume())


def test_fresh_network_outputs_zero_and_checkpointing_keeps_gradients():
    net = build_unet(unet_preset("tiny"))
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.count_nonzero(net(x, 10, condition_volume())) == 0  # zero-initialised output conv
    randomized(net, seed=8).train()
    grads = []
    for flag in (False, True):
        net.zero_grad()
        net.gradient_checkpointing = flag
        net(x, torch.tensor([10]), condition_volume()).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
