"""The image-conditioned DiT (AvatarArtist's triplane-latent denoiser), its presets, FLOPs and converter."""

from avatar4d.models.dit.config import DIT_PRESETS, DiTConfig
from avatar4d.models.dit.convert import (
    convert_released_dit,
    convert_released_dit_file,
    load_dit,
    load_released_dit_file,
    save_dit,
)
from avatar4d.models.dit.embeddings import sincos_pos_embed_2d
from avatar4d.models.dit.flops import dit_flops
from avatar4d.models.dit.model import ImageConditionedDiT

__all__ = [
    "DIT_PRESETS",
    "DiTConfig",
    "ImageConditionedDiT",
    "convert_released_dit",
    "convert_released_dit_file",
    "dit_flops",
    "load_dit",
    "load_released_dit_file",
    "save_dit",
    "sincos_pos_embed_2d",
]
