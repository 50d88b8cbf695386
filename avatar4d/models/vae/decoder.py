"""Triplane VAE decoder: transposed 3D convolutions that double H and W per stage, never F."""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avatar4d.models.vae.config import TriplaneVAEConfig
from avatar4d.models.vae.layers import ResBlock, SamePadConv3d, SamePadConvTranspose3d

UP_STRIDE = (1, 2, 2)  # (plane, H, W)


class UpStage(nn.Module):
    """``up`` (transposed k4, stride (1, 2, 2)) then residual blocks ``res1`` … ``res{n}`` (release: n = 2)."""

    def __init__(self, in_channels: int, out_channels: int, config: TriplaneVAEConfig) -> None:
        super().__init__()
        self.up = SamePadConvTranspose3d(in_channels, out_channels, 4, stride=UP_STRIDE,
                                         padding_mode=config.padding_mode)
        kwargs = dict(norm_groups=config.norm_groups, norm_eps=config.norm_eps, padding_mode=config.padding_mode)
        self.num_res_blocks = config.decoder_res_blocks
        for index in range(1, self.num_res_blocks + 1):
            setattr(self, f"res{index}", ResBlock(out_channels, **kwargs))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, F, r, r] -> [B, C_out, F, 2r, 2r]
        x = self.up(x)
        for index in range(1, self.num_res_blocks + 1):
            x = getattr(self, f"res{index}")(x)
        return x


class TriplaneDecoder(nn.Module):
    """[B, z_channels, F, r, r] (after ``post_quant_conv``) → [B, in_channels, F, r·2^n, r·2^n].

    As in the release there is no input conv: the first transposed conv takes the z channels
    directly and is the widest stage (paper 8 → 1024 → 512 → 256, then ``conv_out`` 256 → 32).
    """

    def __init__(self, config: TriplaneVAEConfig) -> None:
        super().__init__()
        widths = config.decoder_widths()
        inputs = [config.z_channels, *widths[:-1]]
        self.conv_blocks = nn.ModuleList(UpStage(i, o, config) for i, o in zip(inputs, widths))
        self.conv_out = SamePadConv3d(widths[-1], config.in_channels, 3, padding_mode=config.padding_mode)
        self.gradient_checkpointing = False

    def forward(self, z: Tensor) -> Tensor:
        # z: [B, z, F, r, r]
        h = z
        for stage in self.conv_blocks:  # each: [B, w_in, F, r, r] -> [B, w_out, F, 2r, 2r]
            if self.gradient_checkpointing and h.requires_grad:
                h = checkpoint(stage, h, use_reentrant=False)
            else:
                h = stage(h)
        return self.conv_out(h)  # [B, C_in, F, r*2^n, r*2^n]
