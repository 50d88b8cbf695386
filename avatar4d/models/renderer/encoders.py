"""Image encoders of the motion-aware renderer (Live3DPortrait / Portrait4D style).

* :class:`GlobalEncoder` (``encoder_global``): a ResNet (BasicBlocks, **no normalisation layers**, input
  RGB + 2 coordinate channels, layers 3 and 4 dilated for output stride 8) and a DeepLabV3 decoder
  without BatchNorm (ASPP of 1×1, three dilated 3×3 and an image-pooling branch, 1×1 projection, 3×3).
  Names follow segmentation_models_pytorch's ``ResNetEncoder`` + ``DeepLabV3Decoder`` (``encoder.layer1.0.conv1``,
  ``decoder.0.convs.4.1``, ``decoder.0.project.0``, ``decoder.1``) as the release stores them.
  Written here instead of importing smp/torchvision: the core depends on torch + numpy only, and
  the release's variant (Identity norms, 5 input channels) is not a stock model of either.
* :class:`DetailEncoder` (``encoder_detail``): a 7×7 stride-2 conv and four 3×3 convs, LeakyReLU.
* :class:`PlaneFeatureEncoder` (``triplnae_encoder``, the release's spelling): StyleGAN2-style residual
  encoder of the mesh-rasterized texture (C features + 1 alpha) into the face backbone's conditioning
  pyramid (coarsest first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.models.discriminator import Conv2dLayer
from avatar4d.models.stylegan2.ops import downsample2d, setup_filter
from avatar4d.models.stylegan2.synthesis import FIR_TAPS


def add_coordinates(images: Tensor) -> Tensor:
    """[B, C, H, W] → [B, C + 2, H, W] with x and y in [-1, 1] appended (the release's ``AddCoord``)."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype),
                            torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype), indexing="ij")
    coords = torch.stack([xs, ys])[None].expand(b, 2, h, w)
    return torch.cat([images, coords], dim=1)


class BasicBlock(nn.Module):
    """ResNet basic block without normalisation; ``downsample.0`` is the 1×1 projection when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in, H, W] -> [B, out, H / stride, W / stride]
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + identity)


class ResNetStages(nn.Module):
    """conv1 7×7/2 → max-pool/2 → layer1 … layer4 (strides 1, 2, then dilation 2 and 4: output stride 8)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        previous = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [BasicBlock(previous if i == 0 else width, width, strides[index] if i == 0 else 1,
                                 dilations[index]) for i in range(depth)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            previous = width

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in, H, W] -> [B, widths[-1], H / 8, W / 8]
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling without BatchNorm: ``convs.0`` 1×1, ``convs.1-3`` dilated 3×3,
    ``convs.4`` global pooling + 1×1; concatenated and projected by ``project.0`` (1×1)."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU())]
        for rate in rates:
            branches.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate,
                                                    bias=False), nn.ReLU()))
        branches.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.ReLU()))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in, h, w] -> [B, out, h, w]
        outs = [branch(x) for branch in self.convs[:-1]]
        pooled = self.convs[-1](x)  # [B, out, 1, 1]
        outs.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class GlobalEncoder(nn.Module):
    """Source image [B, 3, S, S] → global features [B, aspp_channels, S / 8, S / 8]."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], aspp_channels: int,
                 rates: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = ResNetStages(5, widths, depths)
        self.decoder = nn.Sequential(ASPP(widths[-1], aspp_channels, rates),
                                     nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False), nn.ReLU())

    def forward(self, image: Tensor) -> Tensor:
        # image: [B, 3, S, S] -> [B, aspp, S/8, S/8]
        return self.decoder(self.encoder(add_coordinates(image)))


class DetailEncoder(nn.Module):
    """Source image [B, 3, S, S] → detail features [B, channels[-1], S / 2, S / 2]."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(5, channels[0], 7, 2, 3), nn.LeakyReLU(0.01)]
        for previous, width in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(previous, width, 3, 1, 1), nn.LeakyReLU(0.01)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        # image: [B, 3, S, S] -> [B, C_d, S/2, S/2]
        return self.encoder(add_coordinates(image))


class PlaneEncoderBlock(nn.Module):
    """``fromrgb`` (1×1, no bias) of the conditioning image downsampled by ``image_down``, added to the
    previous block's output, then conv1 (3×3) and conv2 (3×3, down ``down``), LeakyReLU.

    The release's block (``EncoderResBlock`` of its StyleUNet code) was not available to read; this
    forward is the one its parameter shapes and the face backbone's pyramid fix (documented in the
    renderer's docstring)."""

    def __init__(self, img_channels: int, in_channels: int, out_channels: int, down: int, image_down: int) -> None:
        super().__init__()
        self.register_buffer("resample_filter", setup_filter(FIR_TAPS))
        self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, bias=False, activation="lrelu")
        self.conv1 = Conv2dLayer(in_channels, in_channels, 3, activation="lrelu")
        self.conv2 = Conv2dLayer(in_channels, out_channels, 3, activation="lrelu", down=down)
        self.image_down = image_down

    def forward(self, image: Tensor, skip: Tensor | None) -> Tensor:
        # image: [B, C+1, R, R]; skip: [B, in, R / image_down, ...] -> [B, out, R / image_down / down, ...]
        steps = int(round(math.log2(self.image_down)))
        for _ in range(steps):
            image = downsample2d(image, self.resample_filter)
        x = self.fromrgb(image)
        if skip is not None:
            x = x + skip
        return self.conv2(self.conv1(x))


class PlaneFeatureEncoder(nn.Module):
    """Mesh-rasterized texture [B, C + 1, R, R] → the face backbone's pyramid, coarsest first:
    ``[C @ s, ch(s) @ s, ch(2s) @ 2s, …, ch(R) @ R]`` (s = ``pyramid_start``; ch from the backbone)."""

    def __init__(self, plane_channels: int, resolution: int, pyramid_start: int, channel_base: int,
                 channel_max: int) -> None:
        super().__init__()

        def width(res: int) -> int:
            return min(channel_base // res, channel_max)

        self.encoder = nn.ModuleList(PlaneEncoderBlock(plane_channels + 1, *spec) for spec in self._specs(
            plane_channels, resolution, pyramid_start, width))

    @staticmethod
    def _specs(plane_channels: int, resolution: int, start: int, width) -> list[tuple[int, int, int, int]]:
        """(in, out, down, image_down) per block. The first keeps the resolution (out = ch(R)); each next
        halves it (out = ch(r / 2)) down to s; the last maps ch(s) → C at s."""
        specs = [(width(2 * resolution), width(resolution), 1, 1)]
        res = resolution
        while res > start:
            specs.append((width(res), width(res // 2), 2, resolution // res))
            res //= 2
        specs.append((width(start), plane_channels, 1, resolution // start))
        return specs

    def forward(self, image: Tensor) -> list[Tensor]:
        # image: [B, C+1, R, R] -> pyramid coarsest first, e.g. paper [32@32, 512@32, 512@64, 256@128, 128@256]
        outs, x = [], None
        for block in self.encoder:
            x = block(image, x)
            outs.append(x)
        return outs[::-1]
