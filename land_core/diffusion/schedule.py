"""The forward diffusion process of LAND: linear betas, v-prediction, Min-SNR-gamma loss weights.

LAND trains with T = 1000 steps, betas linear from 1e-4 to 0.02, velocity prediction and the
Min-SNR-gamma weighting (gamma = 5). With ``a_t = sqrt(alphas_cumprod[t])`` and
``s_t = sqrt(1 - alphas_cumprod[t])`` (so ``a_t^2 + s_t^2 = 1``):

* noising:   ``x_t = a_t * x0 + s_t * eps``
* velocity:  ``v   = a_t * eps - s_t * x0``
* inverses:  ``x0 = a_t * x_t - s_t * v``, ``eps = s_t * x_t + a_t * v``
* SNR:       ``snr_t = a_t^2 / s_t^2``
* Min-SNR-gamma weight on the *v* loss: ``min(snr, gamma) / (snr + 1)`` (on the epsilon loss
  ``min(snr, gamma) / snr``, on the x0 loss ``min(snr, gamma)``): the same weight on the x0 error
  in all three parametrisations.

The betas come from MONAI's noise-schedule registry (the same functions its DDPM and DDIM schedulers
use), so the samplers in :mod:`land_core.diffusion.samplers` and this module share one
``alphas_cumprod``. This module knows nothing of networks: a model is a callable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.networks.schedulers import NoiseSchedules

from land_core.config import config_from_dict

PredictionType = Literal["v_prediction", "epsilon", "sample"]
BetaSchedule = Literal["linear", "scaled_linear"]

_MONAI_SCHEDULE = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process a model was trained with; saved in ``config.json`` next to the weights.

    ``min_snr_gamma`` None disables the Min-SNR weighting (plain MSE). ``condition_dropout`` is the
    probability that training replaces a sample's condition by the null condition, which is what
    makes classifier-free guidance possible at sampling time (0 disables it).
    """

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: PredictionType = "v_prediction"
    min_snr_gamma: float | None = 5.0
    condition_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in _MONAI_SCHEDULE:
            raise ValueError(f"beta_schedule must be one of {', '.join(_MONAI_SCHEDULE)}, got {self.beta_schedule!r}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.prediction_type not in ("v_prediction", "epsilon", "sample"):
            raise ValueError(f"prediction_type must be v_prediction, epsilon or sample, got {self.prediction_type!r}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive or null, got {self.min_snr_gamma}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``diffusion`` entry of ``config.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ``ValueError``."""
        return config_from_dict(cls, data, "diffusion")


# ---------------------------------------------------------------------------------- conversions
# Pure functions of (alpha, sigma) with alpha^2 + sigma^2 = 1; alpha and sigma broadcast with x.


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Velocity target ``v = alpha * eps - sigma * x0``."""
    return alpha * eps - sigma * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Clean sample from a velocity: ``x0 = alpha * x_t - sigma * v``."""
    return alpha * x_t - sigma * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Noise from a velocity: ``eps = sigma * x_t + alpha * v``."""
    return sigma * x_t + alpha * v


def v_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Velocity from a noise prediction: ``v = (eps - sigma * x_t) / alpha``."""
    return (eps - sigma * x_t) / alpha


def v_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Velocity from a clean-sample prediction: ``v = (alpha * x_t - x0) / sigma``."""
    return (alpha * x_t - x0) / sigma


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Clean sample from a noise prediction: ``x0 = (x_t - sigma * eps) / alpha``."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Noise from a clean-sample prediction: ``eps = (x_t - alpha * x0) / sigma``."""
    return (x_t - alpha * x0) / sigma


def min_snr_weight(snr: torch.Tensor, gamma: float | None, prediction_type: PredictionType = "v_prediction") -> torch.Tensor:
    """Min-SNR-gamma loss weight for ``prediction_type`` (Hang et al., ICCV 2023); 1 when gamma is None.

    v: ``min(snr, gamma) / (snr + 1)``; epsilon: ``min(snr, gamma) / snr``; sample: ``min(snr, gamma)``.
    """
    if gamma is None:
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


class NoiseSchedule:
    """``alphas_cumprod`` of a :class:`DiffusionConfig` plus everything training and sampling need.

    Timesteps are integer indices ``0 .. T-1`` (a tensor of shape ``(B,)`` for a batch); per-sample
    coefficients broadcast over the remaining dimensions of ``x``. Coefficients are kept in float64
    and cast to the dtype of the tensor they multiply.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        c = self.config
        betas = NoiseSchedules[_MONAI_SCHEDULE[c.beta_schedule]](
            c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end
        )
        # MONAI computes the schedule in float32 (as its schedulers do); keep exactly those values.
        self.betas = betas.to(torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.config.num_train_timesteps

    @property
    def prediction_type(self) -> PredictionType:
        """What the model predicts: ``v_prediction`` (LAND), ``epsilon`` or ``sample``."""
        return self.config.prediction_type

    # ------------------------------------------------------------------ coefficients
    def _gather(self, values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        if t.min() < 0 or t.max() >= self.num_train_timesteps:
            raise ValueError(f"timesteps must be in 0..{self.num_train_timesteps - 1}, got {t.min()}..{t.max()}")
        out = values[t.cpu()].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def alpha_sigma(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(alphas_cumprod[t]), sqrt(1 - alphas_cumprod[t]))`` shaped to broadcast with ``like``."""
        alpha = self._gather(self.alphas_cumprod.sqrt(), t, like)
        sigma = self._gather((1.0 - self.alphas_cumprod).sqrt(), t, like)
        return alpha, sigma

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio ``alphas_cumprod / (1 - alphas_cumprod)`` at ``t`` (float64)."""
        ac = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]
        return ac / (1.0 - ac)

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Uniform random training timesteps, shape ``(batch_size,)``, on ``generator``'s device then ``device``."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x_t = a_t * x0 + s_t * noise`` (q(x_t | x0)); also what inpainting uses for the known region."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The regression target for the configured ``prediction_type``."""
        if self.prediction_type == "v_prediction":
            alpha, sigma = self.alpha_sigma(t, x0)
            return v_from_x0_eps(x0, noise, alpha, sigma)
        if self.prediction_type == "epsilon":
            return noise
        return x0

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample Min-SNR-gamma weights, shape ``(B,)`` float32 (ones when gamma is None)."""
        return min_snr_weight(self.snr(t), self.config.min_snr_gamma, self.prediction_type).float()

    def training_loss(
        self, model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Min-SNR-weighted MSE between ``model_output`` and the target, averaged over the batch.

        Per sample: ``weight(t) * mean((model_output - target)^2)``. Returns a scalar.
        """
        target = self.target(x0, noise, t)
        per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        return (self.loss_weights(t).to(per_sample.device) * per_sample).mean()

    # ------------------------------------------------------------------ parametrisations
    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` implied by a model output in the configured parametrisation."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        if self.prediction_type == "v_prediction":
            return x0_from_v(x_t, model_output, alpha, sigma), eps_from_v(x_t, model_output, alpha, sigma)
        if self.prediction_type == "epsilon":
            return x0_from_eps(x_t, model_output, alpha, sigma), model_output
        return model_output, eps_from_x0(x_t, model_output, alpha, sigma)


def condition_dropout_mask(
    batch_size: int, probability: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean ``(batch_size,)``: True where training should use the null condition (for CFG)."""
    if probability <= 0.0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    gen_device = generator.device if generator is not None else "cpu"
    draw = torch.rand(batch_size, generator=generator, device=gen_device)
    return (draw < probability).to(device)
