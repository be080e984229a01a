"""The networks of LAND: the image VAE and the denoising U-Net, each built from a config dataclass.

``build_vae(vae_preset("land"))`` and ``build_unet(unet_preset("land"))`` give the paper's networks;
``demo`` presets run on a laptop CPU and ``tiny`` ones are for tests. Checkpoints (configs next to
safetensors weights) live in :mod:`land_core.checkpoint`.
"""

from land_core.models.unet import (
    ConditionTokenizer,
    LandUNet,
    UNetConfig,
    build_unet,
    pool_condition,
    unet_preset,
)
from land_core.models.vae import LandVAE, VAEConfig, build_vae, count_parameters, vae_preset

__all__ = [
    "ConditionTokenizer",
    "LandUNet",
    "LandVAE",
    "UNetConfig",
    "VAEConfig",
    "build_unet",
    "build_vae",
    "count_parameters",
    "pool_condition",
    "unet_preset",
    "vae_preset",
]
