"""The forward process: LAND's schedule, exact parametrisation conversions, Min-SNR weights, config I/O."""

from __future__ import annotations

import pytest
import torch

from land_core.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    condition_dropout_mask,
    eps_from_v,
    eps_from_x0,
    min_snr_weight,
    v_from_eps,
    v_from_x0,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)



@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(DiffusionConfig())


def test_linear_schedule_matches_the_paper(schedule):
    betas = schedule.betas
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-5)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-5)
    assert torch.allclose(betas[1:] - betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64), atol=1e-9)
    # the same alphas_cumprod as MONAI's schedulers use
    from monai.networks.schedulers import DDPMScheduler

    monai_ac = DDPMScheduler(1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02).alphas_cumprod
    assert torch.equal(schedule.alphas_cumprod.float(), monai_ac)
    # nearly all signal at t=0, nearly none at T-1
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert schedule.alphas_cumprod[-1].item() < 1e-4


def test_conversions_are_exact_inverses(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 3, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 4, 3, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    a, s = schedule.alpha_sigma(t, x0)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12)
    x_t = schedule.add_noise(x0, eps, t)
    v = v_from_x0_eps(x0, eps, a, s)
    assert torch.allclose(schedule.target(x0, eps, t), v)
    # v -> (x0, eps) -> v, and every pair of parametrisations round-trips
    assert torch.allclose(x0_from_v(x_t, v, a, s), x0, atol=1e-10)
    assert torch.allclose(eps_from_v(x_t, v, a, s), eps, atol=1e-10)
    assert torch.allclose(v_from_eps(x_t, eps, a, s), v, atol=1e-9)
    assert torch.allclose(v_from_x0(x_t, x0, a, s), v, atol=1e-9)
    assert torch.allclose(x0_from_eps(x_t, eps, a, s), x0, atol=1e-9)
    assert torch.allclose(eps_from_x0(x_t, x0, a, s), eps, atol=1e-9)
    x0_hat, eps_hat = schedule.predict_x0_eps(v, x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-10) and torch.allclose(eps_hat, eps, atol=1e-10)


def test_parametrisations_agree_through_predict_x0_eps():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 400, 900])
    for kind in ("v_prediction", "epsilon", "sample"):
        sch = NoiseSchedule(DiffusionConfig(prediction_type=kind))
        x_t = sch.add_noise(x0, eps, t)
        got_x0, got_eps = sch.predict_x0_eps(sch.target(x0, eps, t), x_t, t)
        assert torch.allclose(got_x0, x0, atol=1e-9), kind
        assert torch.allclose(got_eps, eps, atol=1e-9), kind


def test_min_snr_weights_match_the_formula(schedule):
    t = torch.tensor([0, 50, 100, 200, 400, 999])
    ac = schedule.alphas_cumprod[t]
    snr = ac / (1 - ac)
    expected_v = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1)
    assert torch.allclose(schedule.loss_weights(t).double(), expected_v, rtol=1e-6)
    # high-SNR steps are capped at gamma, low-SNR steps weigh snr/(snr+1)
    assert schedule.loss_weights(torch.tensor([0]))[0].item() == pytest.approx(5.0 / (snr[0].item() + 1), rel=1e-6)
    assert schedule.loss_weights(torch.tensor([999]))[0].item() == pytest.approx(snr[-1].item() / (snr[-1].item() + 1), rel=1e-5)
    snr_vals = torch.tensor([0.1, 1.0, 5.0, 50.0], dtype=torch.float64)
    assert torch.allclose(min_snr_weight(snr_vals, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1], dtype=torch.float64))
    assert torch.allclose(min_snr_weight(snr_vals, 5.0, "sample"), torch.tensor([0.1, 1.0, 5.0, 5.0], dtype=torch.float64))
    assert torch.equal(min_snr_weight(snr_vals, None), torch.ones(4, dtype=torch.float64))
    # the three parametrisations put the same weight on the x0 error: w_v * (snr + 1) == w_eps * snr
    w_v = min_snr_weight(snr_vals, 5.0, "v_prediction") * (snr_vals + 1)
    assert torch.allclose(w_v, min_snr_weight(snr_vals, 5.0, "epsilon") * snr_vals)
    assert torch.allclose(w_v, min_snr_weight(snr_vals, 5.0, "sample"))


def test_training_loss_is_the_weighted_mse(schedule):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 4, 4, 4, generator=g)
    noise = torch.randn(3, 4, 4, 4, 4, generator=g)
    t = torch.tensor([5, 300, 900])
    target = schedule.target(x0, noise, t)
    assert schedule.training_loss(target, x0, noise, t).item() == 0.0
    pred = target + 0.5  # squared error 0.25 everywhere
    expected = (0.25 * schedule.loss_weights(t)).mean().item()
    assert schedule.training_loss(pred, x0, noise, t).item() == pytest.approx(expected, rel=1e-6)


def test_timesteps_and_dropout_are_seeded(schedule):
    a = schedule.sample_timesteps(64, torch.Generator().manual_seed(3))
    b = schedule.sample_timesteps(64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1000 and a.unique().numel() > 30
    m = condition_dropout_mask(10_000, 0.1, torch.Generator().manual_seed(4))
    assert m.dtype == torch.bool and 0.08 < m.float().mean().item() < 0.12
    assert not condition_dropout_mask(100, 0.0).any()
    with pytest.raises(ValueError, match="timesteps"):
        schedule.alpha_sigma(torch.tensor([1000]), torch.zeros(1, 2))


def test_config_round_trip_and_strictness():
    cfg = DiffusionConfig(min_snr_gamma=None, condition_dropout=0.0)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    assert DiffusionConfig.from_dict({}) == DiffusionConfig()
    assert DiffusionConfig.from_dict({"min_snr_gamma": 5}).min_snr_gamma == 5.0
    with pytest.raises(ValueError, match="unknown key"):
        DiffusionConfig.from_dict({"num_train_timestep": 1000})
    with pytest.raises(ValueError, match="integer"):
        DiffusionConfig.from_dict({"num_train_timesteps": "1000"})
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig.from_dict({"prediction_type": "velocity"})
    with pytest.raises(ValueError, match="beta"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
