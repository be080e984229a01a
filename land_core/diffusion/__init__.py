"""The diffusion process of LAND: noise schedule, v-prediction, Min-SNR weights and samplers.

Knows nothing of the networks (an import-linter contract checks it): a model enters as a callable
``model_fn(x_t, t) -> v``. Typical use::

    schedule = NoiseSchedule(DiffusionConfig())              # T=1000, linear betas, v-prediction
    loss = schedule.training_loss(unet(x_t, t, cond), x0, noise, t)      # training
    for step, total, x0_hat in sample("dpm_solver++", model_fn, schedule, (1, 4, 64, 64, 64),
                                      num_steps=20, generator=gen):      # sampling
        ...
"""

from land_core.diffusion.samplers import (
    SAMPLERS,
    SamplerStep,
    SamplingCancelled,
    classifier_free_guidance,
    ddim_sampler,
    ddpm_sampler,
    dpm_solver_pp_sampler,
    dpm_solver_timesteps,
    final_sample,
    guided_model_fn,
    sample,
)
from land_core.diffusion.schedule import (
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

__all__ = [
    "SAMPLERS",
    "DiffusionConfig",
    "NoiseSchedule",
    "SamplerStep",
    "SamplingCancelled",
    "classifier_free_guidance",
    "condition_dropout_mask",
    "ddim_sampler",
    "ddpm_sampler",
    "dpm_solver_pp_sampler",
    "dpm_solver_timesteps",
    "eps_from_v",
    "eps_from_x0",
    "final_sample",
    "guided_model_fn",
    "min_snr_weight",
    "sample",
    "v_from_eps",
    "v_from_x0",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
