"""StyleGAN2 synthesis network ("skip" architecture) with a feature pyramid and per-block hooks.

Names and shapes follow StyleGAN2/EG3D so released checkpoints load unchanged: blocks ``b4`` ...
``b{res}``, each with ``conv0`` (absent in b4; 2x up-sampling), ``conv1`` and ``torgb``; b4 holds
the learned ``const`` input. Next3D++ needs two extras, both on :meth:`SynthesisNetwork.forward`:

- ``return_pyramid=True`` returns ``[img@start, x@start, x@2start, ..., x@res, img@res]`` (the
  block features from ``pyramid_start`` up, framed by the skip images), as InvertAvatar's
  ``return_list``;
- ``block_hooks={res: hook}`` calls ``hook(x, img) -> (x, img)`` after block ``res`` and continues
  with what it returns (the face backbone alpha-blends rasterised texture features in this way;
  see :func:`alpha_blend_hooks`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from avatar4d.models.layers import FullyConnectedLayer, bias_act
from avatar4d.models.stylegan2.ops import modulated_conv2d, setup_filter, upsample2d

logger = logging.getLogger(__name__)

BlockHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
NOISE_MODES = ("random", "const", "none")
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optional 2x FIR up-sampling) + noise + bias + lrelu.

    ``weight [out, in, k, k]`` is stored unscaled; demodulation makes the equalised-lr gain
    ``1/sqrt(in k^2)`` cancel, so it is not applied. Styles come from ``affine`` (bias init 1).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, kernel_size: int = 3,
                 up: int = 1, activation: str = "lrelu", resample_filter: Sequence[float] = FIR_TAPS,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.activation, self.conv_clamp = resolution, up, activation, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = math.sqrt(2.0) if activation in ("lrelu", "relu", "silu") else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x: Tensor, w: Tensor, *, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> Tensor:
        # x: [B, in, r/up, r/up], w: [B, w_dim] -> [B, out, r, r]
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        styles = self.affine(w)  # [B, in]
        noise = None
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [r, r]
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}")


class ToRGBLayer(nn.Module):
    """1x1 modulated conv to ``out_channels`` without demodulation; style scaled by ``1/sqrt(in k^2)``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *, kernel_size: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.conv_clamp = in_channels, out_channels, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: Tensor, w: Tensor, *, fused_modconv: bool = True) -> Tensor:
        # x: [B, in, r, r], w: [B, w_dim] -> [B, out, r, r]
        styles = self.affine(w) * self.weight_gain  # [B, in]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" generator: (const | conv0 up) -> conv1 -> torgb added to the
    FIR-upsampled skip image. Consumes ``num_conv + num_torgb`` ws (the torgb w is shared with the
    next block's conv0, as in StyleGAN2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, *,
                 resample_filter: Sequence[float] = FIR_TAPS, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels = resolution, img_channels
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, *, noise_mode: str = "random",
                fused_modconv: bool = True) -> tuple[Tensor, Tensor]:
        # x: [B, in, r/2, r/2] (None for the const block), img: [B, img_ch, r/2, r/2] or None,
        # ws: [B, num_conv + num_torgb, w_dim] -> x: [B, out, r, r], img: [B, img_ch, r, r]
        if ws.ndim != 3 or ws.shape[1] != self.num_conv + self.num_torgb or ws.shape[2] != self.w_dim:
            raise ValueError(f"block b{self.resolution} needs ws [B, {self.num_conv + self.num_torgb}, "
                             f"{self.w_dim}], got {tuple(ws.shape)}")
        w_iter = iter(ws.unbind(dim=1))
        kwargs = dict(noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # [B, out, 4, 4]
            x = self.conv1(x, next(w_iter), **kwargs)
        else:
            expected = (self.in_channels, self.resolution // 2, self.resolution // 2)
            if x is None or tuple(x.shape[1:]) != expected:
                raise ValueError(f"block b{self.resolution} needs x [B, {', '.join(map(str, expected))}], "
                                 f"got {None if x is None else tuple(x.shape)}")
            x = self.conv0(x, next(w_iter), **kwargs)  # [B, out, r, r]
            x = self.conv1(x, next(w_iter), **kwargs)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)  # [B, img_ch, r, r]
        if img is not None:
            img = upsample2d(img, self.resample_filter)  # [B, img_ch, r, r]
            y = img + y
        return x, y

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture=skip"


class SynthesisNetwork(nn.Module):
    """Blocks ``b4`` ... ``b{img_resolution}`` with channels ``min(channel_base // res, channel_max)``."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, pyramid_start: int = 32,
                 fused_modconv: bool = True) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        self.channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.fused_modconv = fused_modconv
        self.pyramid_start = self._check_resolution(pyramid_start, "pyramid_start")
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, self.channels[res], w_dim, res, img_channels, conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's torgb

    def _check_resolution(self, res: int, what: str) -> int:
        if res not in self.block_resolutions:
            raise ValueError(f"{what} must be a block resolution {self.block_resolutions}, got {res}")
        return res

    def block(self, res: int) -> SynthesisBlock:
        """The block at resolution ``res``."""
        return getattr(self, f"b{self._check_resolution(res, 'resolution')}")

    def forward(self, ws: Tensor, *, noise_mode: str = "random", fused_modconv: bool | None = None,
                return_pyramid: bool = False, pyramid_start: int | None = None,
                block_hooks: Mapping[int, BlockHook] | None = None) -> Tensor | list[Tensor]:
        """ws: [B, num_ws, w_dim] -> image [B, img_channels, R, R], or the pyramid list.

        ``return_pyramid``: return ``[img@s, x@s, x@2s, ..., x@R, img@R]`` with ``s =
        pyramid_start`` (default: the constructor's); the entries are the block outputs before any
        hook ran. ``block_hooks``: ``{res: hook(x, img) -> (x, img)}`` applied after block ``res``.
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        hooks = dict(block_hooks or {})
        for res in hooks:
            self._check_resolution(res, "block_hooks key")
        start = self._check_resolution(self.pyramid_start if pyramid_start is None else pyramid_start, "pyramid_start")
        fused = self.fused_modconv if fused_modconv is None else fused_modconv
        ws = ws.to(torch.float32)

        x = img = None
        pyramid: list[Tensor] = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)  # [B, n, w_dim]
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, noise_mode=noise_mode, fused_modconv=fused)
            if return_pyramid and res >= start:
                pyramid.extend([img, x] if res == start else [x])
            if res in hooks:
                x, img = hooks[res](x, img)
        if return_pyramid:
            pyramid.append(img)
            return pyramid
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}")


def _blend(target: Tensor, condition: Tensor, what: str) -> Tensor:
    """``cond * alpha + target * (1 - alpha)`` with ``condition = [cond, alpha]`` along channels."""
    if condition.ndim != 4 or condition.shape[1] != target.shape[1] + 1 or condition.shape[2:] != target.shape[2:]:
        raise ValueError(f"{what} condition must be [B, {target.shape[1] + 1}, {target.shape[2]}, "
                         f"{target.shape[3]}] (features + alpha), got {tuple(condition.shape)}")
    cond, alpha = condition[:, :-1], condition[:, -1:]
    return cond.to(target.dtype) * alpha + target * (1 - alpha)


def alpha_blend_hooks(levels: Sequence[Tensor], start_resolution: int, img_resolution: int) -> dict[int, BlockHook]:
    """Hooks that inject a conditioning pyramid the way Next3D++'s face backbone does.

    ``levels[0]`` is ``[B, img_channels + 1, s, s]`` (image + alpha) and alpha-blends the skip image
    after block ``s = start_resolution``; ``levels[k]`` (k >= 1) is ``[B, C_r + 1, r, r]`` and
    alpha-blends the features x after block ``r = s * 2**(k-1)``, for every ``r < img_resolution``
    (the last block is left alone; extra levels are ignored).
    """
    resolutions = []
    res = start_resolution
    while res < img_resolution:
        resolutions.append(res)
        res *= 2
    if not resolutions:
        raise ValueError(f"start_resolution {start_resolution} must be below img_resolution {img_resolution}")
    if len(levels) < len(resolutions) + 1:
        raise ValueError(f"need {len(resolutions) + 1} conditioning levels for resolutions "
                         f"{resolutions}, got {len(levels)}")

    def make_hook(res: int, feature_level: Tensor, image_level: Tensor | None) -> BlockHook:
        def hook(x: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
            if image_level is not None:
                img = _blend(img, image_level, f"image level at {res}")
            return _blend(x, feature_level, f"feature level at {res}"), img
        return hook

    return {res: make_hook(res, levels[1 + k], levels[0] if k == 0 else None) for k, res in enumerate(resolutions)}
