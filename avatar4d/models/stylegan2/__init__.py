"""StyleGAN2 building blocks of the EG3D / Next3D++ generators, named as the released checkpoints.

:class:`StyleGAN2Backbone` is StyleGAN2's ``Generator``: a ``mapping`` network and a ``synthesis``
network. Next3D++ uses three of them at 256 px (static triplane: 96 channels; UV texture and face:
32 channels), all driven by the static backbone's 14 ws.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import Tensor, nn

from avatar4d.config import Config, PresetRegistry
from avatar4d.models.stylegan2.mapping import MappingNetwork
from avatar4d.models.stylegan2.synthesis import (
    BlockHook,
    SynthesisBlock,
    SynthesisLayer,
    SynthesisNetwork,
    ToRGBLayer,
    alpha_blend_hooks,
)

__all__ = [
    "BACKBONE_PRESETS",
    "BlockHook",
    "MappingNetwork",
    "StyleGAN2Backbone",
    "StyleGAN2BackboneConfig",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "alpha_blend_hooks",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StyleGAN2BackboneConfig(Config):
    """Sizes of one StyleGAN2 generator (mapping + skip synthesis network)."""

    z_dim: int = 512
    c_dim: int = 25                        # EG3D camera label (Camera.to_label)
    w_dim: int = 512
    img_resolution: int = 256
    img_channels: int = 96                 # 96 = static triplane (3 x 32); 32 = UV texture / face backbone
    channel_base: int = 32768              # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998
    mapping_num_ws: int | None = None      # None = the synthesis network's num_ws
    conv_clamp: float | None = None
    fused_modconv: bool = True             # one grouped conv per modulated layer (training and inference)
    pyramid_start: int = 32                # first resolution of the feature pyramid (Next3D++: 32)

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 4 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {res}")
        if not 4 <= self.pyramid_start <= res or self.pyramid_start & (self.pyramid_start - 1):
            raise ValueError(f"pyramid_start must be a power of two in [4, {res}], got {self.pyramid_start}")
        if min(self.z_dim, self.w_dim, self.img_channels, self.channel_base, self.channel_max) <= 0:
            raise ValueError("z_dim, w_dim, img_channels, channel_base and channel_max must be positive")


BACKBONE_PRESETS: PresetRegistry[StyleGAN2BackboneConfig] = PresetRegistry("stylegan2_backbone")


@BACKBONE_PRESETS.register("paper")
def _paper() -> StyleGAN2BackboneConfig:
    """The released Next3D++ static backbone (use ``img_channels=32`` for texture/face backbones)."""
    return StyleGAN2BackboneConfig()


@BACKBONE_PRESETS.register("tiny")
def _tiny() -> StyleGAN2BackboneConfig:
    """CPU-test size: 64 px, 16 channels at most (8 at 32 px, 4 at 64 px), 1-layer mapping, pyramid from 8 px
    (same 1/8 ratio)."""
    return StyleGAN2BackboneConfig(z_dim=64, w_dim=64, img_resolution=64, channel_base=256, channel_max=16,
                                   mapping_layers=1, pyramid_start=8)


class StyleGAN2Backbone(nn.Module):
    """StyleGAN2 ``Generator``: ``mapping`` (z, c -> ws) then ``synthesis`` (ws -> image/pyramid)."""

    def __init__(self, config: StyleGAN2BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.synthesis = SynthesisNetwork(config.w_dim, config.img_resolution, config.img_channels,
                                          channel_base=config.channel_base, channel_max=config.channel_max,
                                          conv_clamp=config.conv_clamp, pyramid_start=config.pyramid_start,
                                          fused_modconv=config.fused_modconv)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim,
                                      config.mapping_num_ws or self.num_ws, num_layers=config.mapping_layers,
                                      lr_multiplier=config.mapping_lr_multiplier, w_avg_beta=config.w_avg_beta)

    def forward(self, z: Tensor, c: Tensor, *, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False, **synthesis_kwargs) -> Tensor | list[Tensor]:
        """z: [B, z_dim], c: [B, c_dim] -> image [B, img_channels, R, R] (or the pyramid list).

        ``synthesis_kwargs`` go to :meth:`SynthesisNetwork.forward` (noise_mode, return_pyramid,
        block_hooks, ...).
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)  # [B, num_ws, w_dim]
        return self.synthesis(ws, **synthesis_kwargs)
