"""Triplane VAE encoder: 3D convolutions over (plane, H, W) that halve H and W per stage, never F."""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avatar4d.models.vae.config import TriplaneVAEConfig
from avatar4d.models.vae.layers import ResBlock, SamePadConv3d, group_norm

DOWN_STRIDE = (1, 2, 2)  # (plane, H, W): planes are never merged


class DownStage(nn.Module):
    """``down`` (k4, stride (1, 2, 2), width doubles) then one ``res`` block."""

    def __init__(self, in_channels: int, out_channels: int, config: TriplaneVAEConfig) -> None:
        super().__init__()
        self.down = SamePadConv3d(in_channels, out_channels, 4, stride=DOWN_STRIDE, padding_mode=config.padding_mode)
        self.res = ResBlock(out_channels, norm_groups=config.norm_groups, norm_eps=config.norm_eps,
                            padding_mode=config.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, F, H, W] -> [B, 2C, F, H/2, W/2]
        return self.res(self.down(x))


class TriplaneEncoder(nn.Module):
    """[B, in_channels, F, R, R] → moments [B, 2·z_channels, F, R/2^n, R/2^n] (before ``quant_conv``).

    Module names follow the release (``conv_blocks.{i}.down/res``, ``conv_first``,
    ``final_block.{0: GN, 1: SiLU, 2: conv}``); ``conv_blocks`` is registered first, as there.
    """

    def __init__(self, config: TriplaneVAEConfig) -> None:
        super().__init__()
        widths = config.encoder_widths()
        self.conv_blocks = nn.ModuleList(
            DownStage(widths[i], widths[i + 1], config) for i in range(config.num_downsamples))
        self.conv_first = SamePadConv3d(config.in_channels, widths[0], 3, padding_mode=config.padding_mode)
        self.final_block = nn.Sequential(
            group_norm(widths[-1], config.norm_groups, config.norm_eps),
            nn.SiLU(),
            SamePadConv3d(widths[-1], 2 * config.z_channels, 3, padding_mode=config.padding_mode),
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, F, R, R]
        h = self.conv_first(x)  # [B, base, F, R, R]
        for stage in self.conv_blocks:  # each: [B, w, F, r, r] -> [B, 2w, F, r/2, r/2]
            if self.gradient_checkpointing and h.requires_grad:
                h = checkpoint(stage, h, use_reentrant=False)
            else:
                h = stage(h)
        return self.final_block(h)  # [B, 2*z, F, R/2^n, R/2^n]

