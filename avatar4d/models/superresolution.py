"""EG3D's StyleGAN-modulated super-resolution (``SuperresolutionHybrid8XDC``) with a sizes config.

The neural-rendered feature image (its first 3 channels are the raw RGB) is resized to
``input_resolution`` with antialiased bilinear resampling, then each "skip" synthesis block doubles
the resolution: paper = 128 -> block0 (32 -> 256 ch, 256 px) -> block1 (256 -> 128 ch, 512 px),
``torgb`` to RGB. Every layer uses the generator's last w. Names match the released
``superresolution.block{i}.*`` keys.
"""

from __future__ import annotations

import dataclasses
import logging

import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.config import Config, PresetRegistry
from avatar4d.models.stylegan2.synthesis import NOISE_MODES, SynthesisBlock

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SuperResolutionConfig(Config):
    """Sizes of the super-resolution module; output resolution = input_resolution * 2**len(block_channels)."""

    in_channels: int = 32                       # neural-rendering feature channels
    input_resolution: int = 128                 # features/RGB are resized to this first
    block_channels: tuple[int, ...] = (256, 128)  # output channels of block0, block1, ...
    img_channels: int = 3
    w_dim: int = 512
    antialias: bool = True                      # antialiased bilinear resize of the input (sr_antialias)
    conv_clamp: float | None = 256.0            # the release runs SR in fp16 with conv_clamp 256
    noise_mode: str = "none"                    # superresolution_noise_mode of the release
    fused_modconv: bool = True

    def __post_init__(self) -> None:
        if not self.block_channels or min(self.block_channels) <= 0:
            raise ValueError(f"block_channels must be a non-empty tuple of positive ints, got {self.block_channels}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.input_resolution < 1 or self.in_channels < 3:
            raise ValueError("input_resolution must be >= 1 and in_channels >= 3 (the raw RGB is part of the features)")

    @property
    def output_resolution(self) -> int:
        return self.input_resolution * 2 ** len(self.block_channels)


SUPERRESOLUTION_PRESETS: PresetRegistry[SuperResolutionConfig] = PresetRegistry("superresolution")


@SUPERRESOLUTION_PRESETS.register("paper")
def _paper() -> SuperResolutionConfig:
    """Released ``SuperresolutionHybrid8XDC``: 128 -> 512 px, 1,649,578 parameters."""
    return SuperResolutionConfig()


@SUPERRESOLUTION_PRESETS.register("tiny")
def _tiny() -> SuperResolutionConfig:
    """CPU-test size: the 16² rendering resized to 32², one block of 8 channels → 64 px."""
    return SuperResolutionConfig(input_resolution=32, block_channels=(8,), w_dim=64)


class SuperresolutionHybrid8XDC(nn.Module):
    """EG3D's ``SuperresolutionHybrid8XDC``, generalised to any number of 2x skip blocks (paper: 2)."""

    def __init__(self, config: SuperResolutionConfig) -> None:
        super().__init__()
        self.config = config
        in_channels, res = config.in_channels, config.input_resolution
        for idx, out_channels in enumerate(config.block_channels):
            res *= 2
            block = SynthesisBlock(in_channels, out_channels, config.w_dim, res, config.img_channels,
                                   conv_clamp=config.conv_clamp)
            setattr(self, f"block{idx}", block)
            in_channels = out_channels
        self.num_blocks = len(config.block_channels)

    def forward(self, rgb: Tensor, features: Tensor, ws: Tensor, *, noise_mode: str | None = None,
                fused_modconv: bool | None = None) -> Tensor:
        """rgb: [B, img_ch, r, r], features: [B, in_channels, r, r], ws: [B, N, w_dim] -> [B, img_ch, R_out, R_out].

        Only ``ws[:, -1]`` is used (repeated for every layer). ``noise_mode`` defaults to the config's.
        """
        cfg = self.config
        if ws.ndim != 3 or ws.shape[2] != cfg.w_dim:
            raise ValueError(f"ws must be [B, N, {cfg.w_dim}], got {tuple(ws.shape)}")
        if features.ndim != 4 or features.shape[1] != cfg.in_channels:
            raise ValueError(f"features must be [B, {cfg.in_channels}, H, W], got {tuple(features.shape)}")
        if rgb.ndim != 4 or rgb.shape[1] != cfg.img_channels:
            raise ValueError(f"rgb must be [B, {cfg.img_channels}, H, W], got {tuple(rgb.shape)}")
        size = (cfg.input_resolution, cfg.input_resolution)
        if features.shape[-2:] != size:
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=cfg.antialias)
        if rgb.shape[-2:] != size:
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=cfg.antialias)
        noise_mode = cfg.noise_mode if noise_mode is None else noise_mode
        fused = cfg.fused_modconv if fused_modconv is None else fused_modconv

        w_last = ws[:, -1:, :]  # [B, 1, w_dim]
        x, img = features, rgb  # [B, C, r_in, r_in], [B, 3, r_in, r_in]
        for idx in range(self.num_blocks):
            block: SynthesisBlock = getattr(self, f"block{idx}")
            block_ws = w_last.expand(-1, block.num_conv + block.num_torgb, -1)  # [B, 3, w_dim]
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused)  # x2 resolution
        return img
