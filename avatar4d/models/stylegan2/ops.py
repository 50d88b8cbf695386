"""StyleGAN2 resampling and modulated-convolution ops in pure PyTorch.

These reproduce the numerics of NVIDIA's ``upfirdn2d`` / ``conv2d_resample`` /
``modulated_conv2d`` reference paths (EG3D ``torch_utils/ops``) without custom CUDA kernels, so
released StyleGAN2/EG3D weights give the same outputs. Everything is vectorised: the modulated
convolution runs as one grouped convolution over the batch ("fused modconv").

Padding lists follow NVIDIA's order ``[x_before, x_after, y_before, y_after]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Padding = int | Sequence[int]


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def setup_filter(taps: Sequence[float] | Tensor, *, normalize: bool = True, gain: float = 1.0,
                 separable: bool | None = None) -> Tensor:
    """Build a FIR filter as StyleGAN2's ``setup_filter``: ``[1,3,3,1]`` -> its 4x4 outer product / 64.

    1-D taps become a 2-D outer product unless ``separable`` (default: only for >= 8 taps).
    ``normalize`` makes the filter keep a constant signal's magnitude (sum 1); ``gain`` scales it.
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter taps must be a non-empty 1-D or 2-D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f * (gain ** (f.ndim / 2))


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [px, py] or [x0, x1, y0, y1], got {padding}")
    return padding[0], padding[1], padding[2], padding[3]


def _filter_size(f: Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])  # (width, height); a 1-D filter is square


def upfirdn2d(x: Tensor, f: Tensor | None, *, up: int = 1, down: int = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Upsample (zero insertion), pad/crop, convolve with FIR ``f``, downsample (keep every ``down``-th).

    ``f`` is 2-D ``[fh, fw]`` or 1-D (separable, applied along x then y); the signal is scaled by
    ``gain`` overall. Output size per axis: ``(in * up + pad0 + pad1 - taps) // down + 1``.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [B, C, H, W], got {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    batch, channels, height, width = x.shape
    px0, px1, py0, py1 = _parse_padding(padding)

    # Upsample by inserting zeros: [B, C, H, 1, W, 1] -> pad -> [B, C, H*up, W*up]
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)

    # Pad (positive) or crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # Convolve (true convolution: conv2d correlates, so flip unless asked not to).
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(channels, 1, *f.shape), groups=channels)
    else:
        taps = f.numel()
        x = F.conv2d(x, f.reshape(1, 1, 1, taps).expand(channels, 1, 1, taps), groups=channels)
        x = F.conv2d(x, f.reshape(1, 1, taps, 1).expand(channels, 1, taps, 1), groups=channels)

    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: Tensor, f: Tensor, *, up: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """FIR upsampling by ``up`` (output ``H * up``), gain-corrected so constants stay constant."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    pad = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=gain * up * up)


def downsample2d(x: Tensor, f: Tensor, *, down: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """FIR downsampling by ``down`` (output ``H // down``)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    pad = [px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2, py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, gain=gain)


def filter2d(x: Tensor, f: Tensor, *, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """Filter with FIR ``f`` keeping the size (zero padding at the borders)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, gain=gain)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur images ``[B, C, H, W]`` as EG3D's discriminator-input blur (``sigma`` in pixels, 0 = off).

    Kept bit-compatible with EG3D's ``loss.run_D``: taps ``2 ** (-(i / sigma) ** 2)`` for
    ``|i| <= floor(3 sigma)``, normalised, applied separably with zero padding.
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32).div(sigma).square().neg().exp2()
    return filter2d(x, taps / taps.sum())


def _conv2d(x: Tensor, w: Tensor, *, stride: int = 1, padding: int | Sequence[int] = 0, groups: int = 1,
            transpose: bool = False, flip_weight: bool = True) -> Tensor:
    """conv2d / conv_transpose2d; ``flip_weight=False`` gives a true convolution (flipped kernel)."""
    if not flip_weight and (w.shape[-1] > 1 or w.shape[-2] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None = None, *, up: int = 1, down: int = 1,
                    padding: Padding = 0, groups: int = 1, flip_weight: bool = True) -> Tensor:
    """2-D convolution with optional FIR up/down-sampling, as StyleGAN2's ``conv2d_resample``.

    ``w``: ``[out, in / groups, kh, kw]``. ``padding`` is relative to the upsampled image. Up-sampling
    uses a stride-``up`` transposed convolution followed by the FIR filter (gain ``up**2``);
    down-sampling filters first, then runs a strided convolution.
    """
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:  # 1x1: downsample first, then convolve
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:  # 1x1: convolve first, then upsample
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if down > 1 and up == 1:  # filter, then strided convolution
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:  # transposed strided convolution, then filter
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv2d(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain convolution
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    return upfirdn2d(x, f, down=down) if down > 1 else x


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, noise: Tensor | None = None, up: int = 1,
                     down: int = 1, padding: int = 0, resample_filter: Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused: bool = True) -> Tensor:
    """StyleGAN2 modulated convolution: scale input channels by ``styles``, convolve, demodulate.

    x: [B, I, H, W], weight: [O, I, k, k] (already gain-scaled or not, as the caller wants),
    styles: [B, I] -> [B, O, H', W']. Demodulation divides each output channel by
    ``sqrt(sum_{i,k} (w * s)^2 + 1e-8)``. ``fused`` runs one grouped convolution with per-sample
    weights; otherwise the activations are scaled before and after a shared-weight convolution.
    ``noise`` (broadcastable to the output) is added after demodulation.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must be [B, {in_channels}, H, W], got {tuple(x.shape)}")
    if styles.shape != (batch, in_channels):
        raise ValueError(f"styles must be [{batch}, {in_channels}], got {tuple(styles.shape)}")

    if x.dtype == torch.float16 and demodulate:  # pre-normalise to avoid fp16 overflow
        weight_max = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / weight_max)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # [B, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, O]

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x

    if demodulate:
        w = w * dcoefs.reshape(batch, out_channels, 1, 1, 1)
    x = x.reshape(1, batch * in_channels, *x.shape[2:])  # [1, B*I, H, W]
    w = w.reshape(batch * out_channels, in_channels, kh, kw)  # [B*O, I, k, k]
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, out_channels, *x.shape[2:])  # [B, O, H', W']
    return x + noise.to(x.dtype) if noise is not None else x
