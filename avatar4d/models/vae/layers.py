"""Building blocks of the triplane VAE: "same"-padded 3D convolutions and the residual block.

Tensors are ``[B, C, F, H, W]`` with F the plane axis (see :mod:`avatar4d.models.vae.layout`).
The convolutions pad their input explicitly (replicate by default) before an unpadded
``nn.Conv3d``, as the released AvatarArtist VAE (TATS's ``SamePadConv3d``) does: the total pad
along a dimension is ``kernel - stride``, split as (ceil(p/2), floor(p/2)) -- (2, 1) for a
4-wide kernel at stride 1 -- so an input divisible by the stride comes out exactly
``size / stride`` long.

Unlike the release, :class:`SamePadConv3d` registers its weight only once (as ``conv.weight``);
the release also exposes it as ``<name>.weight``, which the VAE converter folds away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING_MODES = ("replicate", "reflect", "circular", "constant")

Triple = tuple[int, int, int]


CHANNELS_LAST = torch.channels_last_3d


def channels_last(x: Tensor) -> bool:
    """Whether ``x`` [B, C, F, H, W] is laid out channels-last (and not also contiguous, as size-1 dims allow).

    The convolutions then use their weight in the same layout: oneDNN's channels-last kernels (about a
    third faster than the default ones on the CPU at the tiny preset's few channels, backward included)
    need both input and weight in it. The parameters themselves stay contiguous, so checkpoints,
    DeepSpeed's flat buffers and the EMA see the usual layout.
    """
    return x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


def _triple(value: int | tuple[int, ...], name: str) -> Triple:
    values = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return values  # type: ignore[return-value]


def same_padding(kernel_size: Triple, stride: Triple) -> tuple[int, ...]:
    """``F.pad`` amounts (last dimension first) that make a conv output ``ceil(size / stride)`` long.

    Along each of (F, H, W) the total pad is ``kernel - stride``, put (ceil(p/2), floor(p/2)) on
    the (front, back); the release's transposed convs pre-pad their input with the same amounts.
    """
    pads: list[int] = []
    for kernel, step in reversed(list(zip(kernel_size, stride))):
        total = kernel - step
        if total < 0:
            raise ValueError(f"stride {step} larger than kernel {kernel} would skip input samples")
        pads.extend((total - total // 2, total // 2))
    return tuple(pads)


class SamePadConv3d(nn.Module):
    """3D convolution with explicit "same" padding (replicate by default); weight at ``conv.weight``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, stride: int | Triple = 1,
                 bias: bool = True, padding_mode: str = "replicate") -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        kernel = _triple(kernel_size, "kernel_size")
        step = _triple(stride, "stride")
        self.padding = same_padding(kernel, step)
        self.padding_mode = padding_mode
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=step, padding=0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, F, H, W] -> [B, C_out, F / s_f, H / s_h, W / s_w]
        if channels_last(x):
            x = F.pad(x, self.padding, mode=self.padding_mode).contiguous(memory_format=CHANNELS_LAST)
            y = F.conv3d(x, self.conv.weight.contiguous(memory_format=CHANNELS_LAST), self.conv.bias, self.conv.stride)
            return y.contiguous(memory_format=CHANNELS_LAST)  # 1×1×1 kernels come out contiguous
        return self.conv(F.pad(x, self.padding, mode=self.padding_mode))


class SamePadConvTranspose3d(nn.Module):
    """Transposed 3D convolution that multiplies (F, H, W) exactly by its stride.

    The input is first padded like :class:`SamePadConv3d` (total ``kernel - stride``), then the
    transposed conv runs with ``padding = kernel - 1``: output size = ``(n + k - s - 1) * s -
    2 (k - 1) + k``, which is ``2 n`` for k = 4, s = 2 and ``n`` for k = 4, s = 1. The weight is
    stored as ``convt.weight`` [C_in, C_out, kF, kH, kW], as in the release.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, stride: int | Triple = 1,
                 bias: bool = True, padding_mode: str = "replicate") -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        kernel = _triple(kernel_size, "kernel_size")
        step = _triple(stride, "stride")
        self.padding = same_padding(kernel, step)
        self.padding_mode = padding_mode
        self.convt = nn.ConvTranspose3d(in_channels, out_channels, kernel, stride=step, bias=bias,
                                        padding=tuple(k - 1 for k in kernel))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, F, H, W] -> [B, C_out, F * s_f, H * s_h, W * s_w]
        if channels_last(x):
            x = F.pad(x, self.padding, mode=self.padding_mode).contiguous(memory_format=CHANNELS_LAST)
            y = F.conv_transpose3d(x, self.convt.weight.contiguous(memory_format=CHANNELS_LAST), self.convt.bias,
                                   self.convt.stride, self.convt.padding)
            return y.contiguous(memory_format=CHANNELS_LAST)
        return self.convt(F.pad(x, self.padding, mode=self.padding_mode))


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    """Affine GroupNorm; ``groups`` must divide ``channels`` (the release uses 32 groups, eps 1e-6)."""
    if channels % groups:
        raise ValueError(f"GroupNorm with {groups} groups needs a channel count divisible by it, got {channels}")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), width preserved.

    Keys ``norm1``, ``conv1.conv``, ``norm2``, ``conv2.conv`` follow the release (whose block also
    has a dropout of 0 and an unused width-changing shortcut, neither of which holds parameters).
    """

    def __init__(self, channels: int, *, norm_groups: int, norm_eps: float, padding_mode: str = "replicate") -> None:
        super().__init__()
        self.norm1 = group_norm(channels, norm_groups, norm_eps)
        self.conv1 = SamePadConv3d(channels, channels, 3, padding_mode=padding_mode)
        self.norm2 = group_norm(channels, norm_groups, norm_eps)
        self.conv2 = SamePadConv3d(channels, channels, 3, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, F, H, W] -> [B, C, F, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h
