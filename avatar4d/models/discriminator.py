"""EG3D's camera-conditioned dual discriminator (StyleGAN2 residual D on final + raw images).

The final image and the raw neural rendering (bilinearly upsampled to the final resolution) are
concatenated into 6 channels and judged by residual blocks ``b{R}`` ... ``b8`` and an epilogue
``b4`` (minibatch std, conv, fc, out); the 25-d camera label goes through a ``mapping`` network and
is projected onto the output (``cmap``). Names follow EG3D's ``DualDiscriminator`` (``b512.fromrgb``,
``b512.conv0``, ``b512.skip``, ``mapping.fc7``, ``b4.out``, ...) so EG3D-family D weights can map
onto it. The release does not document its D, so these names are EG3D's, not a verified manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.config import Config, PresetRegistry
from avatar4d.models.layers import FullyConnectedLayer, bias_act
from avatar4d.models.stylegan2.mapping import MappingNetwork
from avatar4d.models.stylegan2.ops import conv2d_resample, gaussian_blur, setup_filter
from avatar4d.models.stylegan2.synthesis import FIR_TAPS

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DualDiscriminatorConfig(Config):
    """Sizes of the dual discriminator."""

    c_dim: int = 25                    # camera label (Camera.to_label); 0 = unconditional
    img_resolution: int = 512          # resolution of the final image
    img_channels: int = 3              # per image; the network sees 2 x img_channels
    channel_base: int = 32768          # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    cmap_dim: int | None = None        # None = channels at 4 px
    mapping_layers: int = 8            # EG3D builds D's label mapping with the default 8 layers
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    conv_clamp: float | None = 256.0   # EG3D's D runs its top resolutions in fp16 with clamp 256
    c_noise: float = 0.0               # disc_c_noise: label noise (x per-dim std) in training mode

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {res}")
        if self.c_noise < 0 or self.mbstd_group_size < 1 or self.mbstd_num_channels < 0:
            raise ValueError("c_noise and mbstd_num_channels must be >= 0 and mbstd_group_size >= 1")


DISCRIMINATOR_PRESETS: PresetRegistry[DualDiscriminatorConfig] = PresetRegistry("dual_discriminator")


@DISCRIMINATOR_PRESETS.register("paper")
def _paper() -> DualDiscriminatorConfig:
    """EG3D/Next3D++ FFHQ 512 px discriminator."""
    return DualDiscriminatorConfig()


@DISCRIMINATOR_PRESETS.register("tiny")
def _tiny() -> DualDiscriminatorConfig:
    """CPU-test size: 64 px, at most 16 channels (4 at 64 px, 8 at 32 px), 1-layer label mapping."""
    return DualDiscriminatorConfig(img_resolution=64, channel_base=256, channel_max=16, mapping_layers=1,
                                   mbstd_group_size=2)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv (weight scaled by ``1/sqrt(in k^2)`` at run time) with optional FIR down-sampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.down, self.conv_clamp, self.padding = down, conv_clamp, kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = math.sqrt(2.0) if activation in ("lrelu", "relu", "silu") else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.register_buffer("resample_filter", setup_filter(FIR_TAPS))

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        # x: [B, in, H, W] -> [B, out, H / down, W / down]
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, down={self.down}"


class DiscriminatorBlock(nn.Module):
    """Residual block: (fromrgb if first) -> conv0 3x3 -> conv1 3x3 down 2, plus a 1x1 down-2 skip."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 *, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.register_buffer("resample_filter", setup_filter(FIR_TAPS))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: Tensor | None, img: Tensor | None) -> Tensor:
        # x: [B, in, r, r] (None for the first block, which reads img [B, img_ch, r, r]) -> [B, out, r/2, r/2]
        if self.in_channels == 0:
            x = self.fromrgb(img)  # [B, tmp, r, r]
        y = self.skip(x, gain=math.sqrt(0.5))  # [B, out, r/2, r/2]
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture=resnet"


class MinibatchStdLayer(nn.Module):
    """Append the mean over features of the per-group standard deviation as extra channels."""

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        # x: [N, C, H, W] -> [N, C + F, H, W]
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        f = self.num_channels
        if n % g:
            raise ValueError(f"batch size {n} must be divisible by the minibatch-std group size {g}")
        y = x.reshape(g, -1, f, c // f, h, w)            # [G, n, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)     # [n, F, c, H, W] variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])        # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)    # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """``b4``: minibatch std -> conv 3x3 -> fc -> out, projected onto the label embedding ``cmap``."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, *, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: Tensor, cmap: Tensor | None) -> Tensor:
        # x: [B, C, 4, 4], cmap: [B, cmap_dim] -> [B, 1]
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)  # [B, C + F, 4, 4]
        x = self.out(self.fc(self.conv(x).flatten(1)))  # [B, cmap_dim or 1]
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))  # [B, 1]
        return x


class DualDiscriminator(PretrainedMixin, nn.Module, component="dual_discriminator"):
    """EG3D ``DualDiscriminator``: logits [B, 1] for (final image, raw image, camera label)."""

    def __init__(self, config: DualDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.img_channels = config.img_channels * 2
        log2 = int(math.log2(config.img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(config.channel_base // res, config.channel_max) for res in self.block_resolutions + [4]}
        cmap_dim = 0 if config.c_dim == 0 else (channels[4] if config.cmap_dim is None else config.cmap_dim)
        self.register_buffer("resample_filter", setup_filter(FIR_TAPS))
        for res in self.block_resolutions:
            in_channels = channels[res] if res < config.img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], res, self.img_channels,
                                       conv_clamp=config.conv_clamp)
            setattr(self, f"b{res}", block)
        if config.c_dim > 0:
            self.mapping = MappingNetwork(0, config.c_dim, cmap_dim, None, num_layers=config.mapping_layers,
                                          w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim, 4, mbstd_group_size=config.mbstd_group_size,
                                        mbstd_num_channels=config.mbstd_num_channels, conv_clamp=config.conv_clamp)

    def forward(self, image: Tensor, image_raw: Tensor, c: Tensor | None, *, blur_sigma: float = 0.0) -> Tensor:
        """image: [B, 3, R, R], image_raw: [B, 3, r, r], c: [B, c_dim] -> logits [B, 1].

        ``blur_sigma`` > 0 blurs both images (each at its own resolution, sigma in its pixels) with
        EG3D's Gaussian, as the fine-tune's decreasing D-input blur; 0 leaves them untouched.
        """
        cfg = self.config
        res = cfg.img_resolution
        if image.ndim != 4 or tuple(image.shape[1:]) != (cfg.img_channels, res, res):
            raise ValueError(f"image must be [B, {cfg.img_channels}, {res}, {res}], got {tuple(image.shape)}")
        if image_raw.ndim != 4 or image_raw.shape[:2] != image.shape[:2]:
            raise ValueError(f"image_raw must be [B, {cfg.img_channels}, r, r] with image's batch, "
                             f"got {tuple(image_raw.shape)}")
        if blur_sigma > 0:
            image, image_raw = gaussian_blur(image, blur_sigma), gaussian_blur(image_raw, blur_sigma)
        elif blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma}")
        raw_up = F.interpolate(image_raw, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        img = torch.cat([image, raw_up.to(image.dtype)], dim=1)  # [B, 6, R, R]

        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)  # [B, C_{r/2}, r/2, r/2]

        cmap = None
        if cfg.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape != (image.shape[0], cfg.c_dim):
                got = None if c is None else tuple(c.shape)
                raise ValueError(f"c must be [{image.shape[0]}, {cfg.c_dim}], got {got}")
            if self.training and cfg.c_noise > 0:
                c = c + torch.randn_like(c) * c.std(0) * cfg.c_noise
            cmap = self.mapping(None, c)  # [B, cmap_dim]
        return self.b4(x, cmap)  # [B, 1]
