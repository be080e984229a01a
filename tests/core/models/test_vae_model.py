"""The image VAE: presets, config I/O, shapes, and memory-bounded decoding against whole decoding."""

from __future__ import annotations

import pytest
import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiConvolution, MaisiGroupNorm3D

from land_core.models import VAEConfig, build_vae, count_parameters, vae_preset



@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_vae(vae_preset("tiny")).eval()


def test_presets_have_the_paper_shape():
    land = vae_preset("land")
    assert land.channels == (32, 64, 128) and land.num_res_blocks == (1, 1, 1) and land.latent_channels == 4
    assert land.downsample_factor == 4 and not any(land.attention_levels)
    assert count_parameters(build_vae(vae_preset("tiny"))) < 10_000
    with torch.device("meta"):
        assert count_parameters(build_vae(land)) == 2_929_057
        assert count_parameters(build_vae(vae_preset("demo"))) == 341_905
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_preset("huge")


def test_config_round_trip_and_strictness():
    cfg = vae_preset("demo", latent_channels=8)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.to_dict()["channels"], list)
    with pytest.raises(ValueError, match="unknown key"):
        VAEConfig.from_dict({**cfg.to_dict(), "chanels": [1, 2]})
    with pytest.raises(ValueError, match="must be an integer"):
        VAEConfig.from_dict({**cfg.to_dict(), "latent_channels": 4.5})
    with pytest.raises(ValueError, match="divide"):
        VAEConfig(channels=(30, 64, 128))
    with pytest.raises(ValueError, match="same length"):
        VAEConfig(channels=(32, 64), num_res_blocks=(1, 1, 1))


def test_encode_decode_shapes_and_determinism(tiny):
    x = torch.rand(2, 1, 32, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu = tiny.encode_latent(x)
        assert mu.shape == (2, 4, 8, 4, 6)
        assert torch.equal(mu, tiny.encode_latent(x))
        s1 = tiny.encode_latent(x, sample=True, generator=torch.Generator().manual_seed(2))
        s2 = tiny.encode_latent(x, sample=True, generator=torch.Generator().manual_seed(2))
        assert torch.equal(s1, s2) and not torch.equal(s1, mu)
        y = tiny.decode_latent(mu)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny.encode_latent(torch.zeros(1, 1, 30, 16, 16))
    with pytest.raises(ValueError, match="latent must be"):
        tiny.decode_latent(torch.zeros(1, 3, 8, 8, 8))


def test_split_decoding_is_exact(tiny):
    z = torch.randn(1, 4, 16, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = tiny.decode_latent(z)
        split = tiny.decode_latent(z, num_splits=4)
        clamped = tiny.decode_latent(z, num_splits=64)  # clamped to 16 // 4 chunks
    assert (split - whole).abs().max().item() < 1e-5
    assert (clamped - whole).abs().max().item() < 1e-5
    assert all(m.num_splits == 1 for m in tiny.modules() if isinstance(m, MaisiConvolution))  # restored


class _StatisticsFree(torch.nn.Module):
    """Stands in for group norm so that a decode is a local operator (for checking the tiling alone)."""

    def forward(self, x):
        return 0.5 * x


def _without_group_norm(vae):
    for module in list(vae.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (MaisiGroupNorm3D, torch.nn.GroupNorm)):
                setattr(module, name, _StatisticsFree())
    return vae


def test_tiled_decoding_against_whole_decoding():
    torch.manual_seed(4)
    vae = build_vae(vae_preset("tiny")).eval()
    assert vae.decoder_halo() == 7
    z = torch.randn(1, 4, 32, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = vae.decode_latent(z)
        one_tile = vae.decode_latent(z, tile_size=(32, 8, 8))
        halo = vae.decode_latent(z, tile_size=(24, 8, 8))  # 2 windows along z (halo 7)
        gauss = vae.decode_latent(z, tile_size=(24, 8, 8), blend="gaussian")
    assert (one_tile - whole).abs().max().item() < 1e-6
    # With group norm, tiles see their own statistics: the remaining difference (untrained weights,
    # output std 0.42) is max 0.067 / mean 0.0097 with halo blending, max 0.91 with MONAI's Gaussian.
    std = whole.std().item()
    d_halo, d_gauss = (halo - whole).abs(), (gauss - whole).abs()
    assert d_halo.mean().item() < 0.06 * std and d_halo.max().item() < 0.6 * std
    assert d_halo.max() < d_gauss.max()

    # Without statistics, halo tiling reproduces whole decoding (the zero padding at window borders
    # is cropped away; measured 1.8e-7 on outputs up to 0.054); Gaussian blending does not (0.018).
    local = _without_group_norm(vae)
    with torch.no_grad():
        whole = local.decode_latent(z)
        halo = local.decode_latent(z, tile_size=(24, 8, 8))
        gauss = local.decode_latent(z, tile_size=(24, 8, 8), blend="gaussian")
    assert (halo - whole).abs().max().item() < 1e-5 * whole.abs().max().item() + 1e-6
    assert (gauss - whole).abs().max().item() > 100 * (halo - whole).abs().max().item()

    with pytest.raises(ValueError, match="three times the halo"):
        vae.decode_latent(z, tile_size=16)
