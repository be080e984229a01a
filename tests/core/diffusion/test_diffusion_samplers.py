"""Samplers on toy problems with a known answer, plus determinism, progress, cancellation and hooks.

For data x0 ~ N(mu, s^2 I) the exact model is known in closed form: E[x0 | x_t] =
mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu). The probability-flow ODE keeps
z = (x_t - a mu) / sqrt(a^2 s^2 + sigma^2) constant, so a deterministic sampler started from x_T
should land on mu + s z_T: that is a per-sample reference, not only a moment check. A 1-D Gaussian
mixture (also closed form) checks a non-linear denoiser.
"""

from __future__ import annotations

import pytest
import torch

from land_core.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    SamplingCancelled,
    classifier_free_guidance,
    ddim_sampler,
    dpm_solver_pp_sampler,
    dpm_solver_timesteps,
    final_sample,
    guided_model_fn,
    sample,
)


SCHEDULE = NoiseSchedule(DiffusionConfig())
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
S = 0.5
N = 4000


def gaussian_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact v-prediction model for x0 ~ N(MU, S^2 I)."""
    a, sg = SCHEDULE.alpha_sigma(t, x)
    x0 = MU + a * S**2 / (a**2 * S**2 + sg**2) * (x - a * MU)
    return a * (x - a * x0) / sg - sg * x0


MIX_MU = torch.tensor([-1.5, 1.5], dtype=torch.float64)
MIX_S = torch.tensor([0.3, 0.3], dtype=torch.float64)
MIX_PI = torch.tensor([0.3, 0.7], dtype=torch.float64)


def mixture_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact v-prediction model for x0 ~ 0.3 N(-1.5, 0.3^2) + 0.7 N(1.5, 0.3^2) (x of shape (B, 1))."""
    a, sg = SCHEDULE.alpha_sigma(t, x)
    var = a**2 * MIX_S**2 + sg**2
    w = torch.softmax(torch.log(MIX_PI) - 0.5 * torch.log(var) - 0.5 * (x - a * MIX_MU) ** 2 / var, dim=1)
    x0 = (w * (MIX_MU + a * MIX_S**2 / var * (x - a * MIX_MU))).sum(1, keepdim=True)
    return a * (x - a * x0) / sg - sg * x0


@pytest.fixture(scope="module")
def x_T() -> torch.Tensor:
    return torch.randn(N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def exact(x_T) -> torch.Tensor:
    a, sg = SCHEDULE.alpha_sigma(999, x_T)
    return MU + S * (x_T - a * MU) / (a**2 * S**2 + sg**2).sqrt()


@pytest.fixture(scope="module")
def ddpm_samples() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return final_sample(sample("ddpm", gaussian_v, SCHEDULE, (N, 3), generator=g, dtype=torch.float64))


def test_ddpm_1000_reproduces_the_data_distribution(ddpm_samples):
    # N=4000: standard errors 0.008 (mean) and 0.006 (std); tolerances are about 4 of them
    assert torch.allclose(ddpm_samples.mean(0), MU, atol=0.03)
    assert torch.allclose(ddpm_samples.std(0), torch.full((3,), S, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize(
    "name, steps, tol",
    [("dpm_solver++", 20, 0.05), ("dpm_solver++", 50, 0.01), ("ddim", 50, 0.15)],
)
def test_deterministic_samplers_follow_the_exact_ode(name, steps, tol, x_T, exact):
    x = final_sample(sample(name, gaussian_v, SCHEDULE, num_steps=steps, x_T=x_T))
    err = (x - exact).abs().max().item()
    assert err < tol, f"{name}-{steps}: max deviation from the exact ODE solution {err:.4f}"
    assert torch.allclose(x.mean(0), MU, atol=0.03)
    assert torch.allclose(x.std(0), torch.full((3,), S, dtype=torch.float64), rtol=0.06)


def test_samplers_agree_with_each_other(ddpm_samples, x_T):
    dpm = final_sample(dpm_solver_pp_sampler(gaussian_v, SCHEDULE, num_steps=20, x_T=x_T))
    ddim = final_sample(ddim_sampler(gaussian_v, SCHEDULE, num_steps=50, x_T=x_T))
    dpm100 = final_sample(dpm_solver_pp_sampler(gaussian_v, SCHEDULE, num_steps=100, x_T=x_T))
    for a, b, tol in ((dpm, ddpm_samples, 0.03), (ddim, ddpm_samples, 0.04), (dpm, ddim, 0.04)):
        assert torch.allclose(a.mean(0), b.mean(0), atol=tol)
        assert torch.allclose(a.std(0), b.std(0), atol=tol)
    # same x_T, same ODE: per-sample agreement, tighter as the solver refines
    assert (dpm - dpm100).abs().max() < 0.05
    assert (ddim - dpm100).abs().max() < 0.15


@pytest.mark.parametrize("name, steps", [("ddpm", 1000), ("dpm_solver++", 20)])
def test_mixture_weights_and_modes(name, steps):
    g = torch.Generator().manual_seed(5)
    x = final_sample(sample(name, mixture_v, SCHEDULE, (N, 1), num_steps=steps, generator=g, dtype=torch.float64))[:, 0]
    pos = x > 0
    assert pos.double().mean().item() == pytest.approx(0.7, abs=0.03)
    assert x[pos].mean().item() == pytest.approx(1.5, abs=0.05)
    assert x[~pos].mean().item() == pytest.approx(-1.5, abs=0.05)
    assert x[pos].std().item() == pytest.approx(0.3, abs=0.04)
    assert x[~pos].std().item() == pytest.approx(0.3, abs=0.04)


@pytest.mark.parametrize("name, kwargs", [("ddpm", {"num_steps": 1000}), ("ddpm", {"num_steps": 30}),
                                          ("ddim", {"eta": 0.5}), ("dpm_solver++", {})])
def test_same_seed_same_sample(name, kwargs):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return final_sample(sample(name, gaussian_v, SCHEDULE, (8, 3), generator=g, dtype=torch.float64, **kwargs))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (8, 3) and torch.isfinite(a).all()


def test_progress_steps_and_final_estimate(x_T):
    seen_t = []

    def fn(x, t):
        seen_t.append(int(t[0]))
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        return gaussian_v(x, t)

    steps = list(dpm_solver_pp_sampler(fn, SCHEDULE, num_steps=12, x_T=x_T[:16]))
    assert [s.step for s in steps] == list(range(1, 13)) and all(s.total == 12 for s in steps)
    assert seen_t == dpm_solver_timesteps(SCHEDULE, 12)
    assert seen_t[0] == 999 and seen_t[-1] == 0
    # the x0 estimates converge: the last is the sample, the first is near the data mean
    assert torch.allclose(steps[0].x0_estimate.mean(0), MU, atol=0.02)
    assert torch.equal(steps[-1].x0_estimate, final_sample(dpm_solver_pp_sampler(gaussian_v, SCHEDULE, num_steps=12, x_T=x_T[:16])))

    seen_t.clear()
    list(ddim_sampler(fn, SCHEDULE, num_steps=50, x_T=x_T[:4]))
    assert seen_t == list(range(980, -1, -20))  # on MONAI's step grid, down to t = 0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 20, 50, 200, 1000])
def test_dpm_timesteps_are_strictly_decreasing(n):
    for spacing in ("logsnr", "linear"):
        ts = dpm_solver_timesteps(SCHEDULE, n, spacing)
        assert len(ts) == n and ts[0] == 999
        assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0
    assert dpm_solver_timesteps(SCHEDULE, n)[-1] == (0 if n > 1 else 999)


def test_cancellation_between_steps(x_T):
    calls = []

    def fn(x, t):
        calls.append(1)
        return gaussian_v(x, t)

    with pytest.raises(SamplingCancelled) as info:
        for _ in sample("dpm_solver++", fn, SCHEDULE, num_steps=20, x_T=x_T[:4], cancel=lambda: len(calls) >= 5):
            pass
    assert info.value.step == 5 and info.value.total == 20 and len(calls) == 5

    calls.clear()  # the caller stops iterating: no further model evaluation
    gen = sample("ddpm", fn, SCHEDULE, num_steps=1000, x_T=x_T[:4])
    for step, total, _ in gen:
        if step == 3:
            break
    gen.close()
    assert len(calls) == 3


def test_post_step_hook_sees_every_next_timestep(x_T):
    seen = []

    def hook(x, t_next):
        seen.append(t_next)
        return x.clamp(max=0.0) if t_next < 0 else x

    out = final_sample(sample("ddim", gaussian_v, SCHEDULE, num_steps=10, x_T=x_T[:32], post_step=hook))
    assert seen == [800 - 100 * i for i in range(9)] + [-1]
    assert out.max().item() <= 0.0  # the final sample is the hooked state


def test_classifier_free_guidance():
    c, u = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(classifier_free_guidance(c, u, 1.0), c)
    assert torch.equal(classifier_free_guidance(c, u, 0.0), u)
    assert torch.equal(classifier_free_guidance(c, u, 3.0), torch.tensor([4.0, -2.0]))
    cond = lambda x, t: x + 1  # noqa: E731
    uncond = lambda x, t: x  # noqa: E731
    assert guided_model_fn(cond, uncond, 1.0) is cond
    assert torch.equal(guided_model_fn(cond, uncond, 2.5)(torch.zeros(2), torch.zeros(2)), torch.full((2,), 2.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        next(sample("ddim", gaussian_v, SCHEDULE, (2, 3), num_steps=0))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("euler", gaussian_v, SCHEDULE, (2, 3))
    with pytest.raises(ValueError, match="shape"):
        next(sample("dpm_solver++", gaussian_v, SCHEDULE))
