"""Triplane VAE: 3D convolutions over (plane, H, W), KL posterior, release-compatible ``paper`` preset.

Layouts (see :mod:`avatar4d.models.vae.layout`): the model works on ``[B, C, F, R, R]``
(channels, planes, H, W); the data factory stores ``[B, F, C, R, R]``; the DiT sees latents as
``[B, C, F·h, w]``. ``paper``: [B, 32, 4, 256, 256] → z [B, 8, 4, 32, 32] → DiT [B, 8, 128, 32].
"""

from avatar4d.models.vae.config import LATENT_SCALE_FACTOR, VAE_PRESETS, TriplaneVAEConfig
from avatar4d.models.vae.convert import (
    COMPONENT,
    convert_released_vae,
    convert_released_vae_checkpoint,
    load_released_vae_file,
    load_vae,
    release_statistics,
    save_vae,
    to_released_vae_state_dict,
)
from avatar4d.models.vae.distribution import DiagonalGaussian
from avatar4d.models.vae.layout import (
    from_dit_tokens,
    scale_latent,
    stacked_to_vae_layout,
    to_dit_tokens,
    unscale_latent,
    vae_layout_to_stacked,
)
from avatar4d.models.vae.model import STATISTICS_KEYS, TriplaneVAE, VAEOutput

__all__ = [
    "COMPONENT",
    "LATENT_SCALE_FACTOR",
    "STATISTICS_KEYS",
    "VAE_PRESETS",
    "DiagonalGaussian",
    "TriplaneVAE",
    "TriplaneVAEConfig",
    "VAEOutput",
    "convert_released_vae",
    "convert_released_vae_checkpoint",
    "from_dit_tokens",
    "load_released_vae_file",
    "load_vae",
    "release_statistics",
    "save_vae",
    "scale_latent",
    "stacked_to_vae_layout",
    "to_dit_tokens",
    "to_released_vae_state_dict",
    "unscale_latent",
    "vae_layout_to_stacked",
]
