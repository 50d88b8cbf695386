"""Adaptive discriminator augmentation (ADA, Karras et al. 2020), the subset the fine-tune uses.

:class:`AugmentPipe` applies, to each image of a batch independently with probability ``p`` each:
an x-flip, an integer translation (up to ``translate_max`` of the side, reflect padding, as ADA's
``xint``), and colour transforms (brightness, contrast, saturation, ADA's ``bgc`` colour part).
Real and generated images go through the same pipe before the discriminator; the final image and
the upsampled raw image are stacked along channels so both get the same transform (as EG3D's
``run_D``). The camera label is left unchanged: the augmentations stay non-leaking while p < ~0.8.

:class:`AdaptiveProbability` is ADA's heuristic: every ``interval`` steps, r_t = E[sign(D(real))]
over the steps since the last adjustment (all ranks); p moves by
``sign(r_t − target) · images_seen / (speed_images)`` (ADA: target 0.6, p from 0 to 1 in 500k
images), clamped to [0, 1]. The state is a buffer of the discriminator part, so DeepSpeed
checkpoints and EMA carry it across resumes.

Written here (not a library): ADA's official pipe is NVIDIA's custom-op code under a non-commercial
licence; kornia has the transforms but not per-sample Bernoulli gating with shared transforms over
stacked channels, nor the p controller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)


class AugmentPipe:
    """Per-sample random flip, integer translation and colour transforms, each with probability p."""

    def __init__(self, *, xflip: bool = True, translate: bool = True, color: bool = True, translate_max: float = 0.125,
                 brightness_std: float = 0.2, contrast_std: float = 0.5, saturation_std: float = 1.0) -> None:
        self.xflip, self.translate, self.color = xflip, translate, color
        self.translate_max = translate_max
        self.brightness_std, self.contrast_std, self.saturation_std = brightness_std, contrast_std, saturation_std

    def __call__(self, images: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """images [B, 3·k, H, W] in [-1, 1] (k stacked RGB images, transformed alike) → same shape."""
        if p <= 0:
            return images
        b, channels, h, w = images.shape
        if channels % 3:
            raise ValueError(f"channels must be a multiple of 3 (stacked RGB images), got {channels}")

        def chosen() -> Tensor:  # [B] which samples get this transform
            return (torch.rand(b, generator=generator) < p).to(images.device)

        x = images
        if self.xflip:
            x = torch.where(chosen()[:, None, None, None], x.flip(-1), x)
        if self.translate:
            x = self._translate(x, chosen(), generator)
        if self.color:
            x = self._color(x, chosen, generator)
        return x

    def _translate(self, x: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
        b, _, h, w = x.shape
        pad = max(1, math.ceil(self.translate_max * max(h, w)))
        shifts = ((torch.rand(b, 2, generator=generator) * 2 - 1) * self.translate_max * torch.tensor([w, h])).round()
        shifts = shifts.long() * mask.cpu().long()[:, None]  # [B, 2] pixels (dx, dy), 0 where not chosen
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # [B, C, H + 2 pad, W + 2 pad]
        rows = torch.arange(h)[None, :] + pad - shifts[:, 1:2]  # [B, H]
        cols = torch.arange(w)[None, :] + pad - shifts[:, 0:1]  # [B, W]
        batch = torch.arange(b)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous()

    def _color(self, x: Tensor, chosen, generator: torch.Generator | None) -> Tensor:
        b, channels = x.shape[:2]
        k = channels // 3
        rgb = x.reshape(b, k, 3, *x.shape[-2:])  # [B, k, 3, H, W]
        device = x.device

        def draw(std: float) -> Tensor:
            return (torch.randn(b, generator=generator) * std).to(device)[:, None, None, None, None]

        brightness = draw(self.brightness_std) * chosen()[:, None, None, None, None]
        rgb = rgb + brightness
        contrast = torch.exp2(draw(self.contrast_std) * chosen()[:, None, None, None, None])
        mean = rgb.mean(dim=(2, 3, 4), keepdim=True)
        rgb = (rgb - mean) * contrast + mean
        luma = torch.tensor(LUMA, device=device, dtype=x.dtype)[None, None, :, None, None]
        gray = (rgb * luma).sum(dim=2, keepdim=True)  # [B, k, 1, H, W]
        saturation = torch.exp2(draw(self.saturation_std) * chosen()[:, None, None, None, None])
        rgb = gray + (rgb - gray) * saturation
        return rgb.reshape_as(x)


class AdaptiveProbability:
    """ADA's p controller; ``p`` lives in a one-element tensor (a module buffer, saved with checkpoints)."""

    def __init__(self, p: Tensor, *, target: float = 0.6, interval: int = 4, speed_images: int = 500_000) -> None:
        if not 0 < target < 1 or interval < 1 or speed_images < 1:
            raise ValueError("need 0 < target < 1, interval >= 1 and speed_images >= 1")
        self.p, self.target, self.interval, self.speed_images = p, target, interval, speed_images
        self.sign_sum, self.count = 0.0, 0

    def accumulate(self, real_logits: Tensor) -> None:
        """Record sign(D(real)) of one micro-batch."""
        self.sign_sum += float(real_logits.detach().sign().sum())
        self.count += real_logits.numel()

    def maybe_adjust(self, step: int, images_per_step: int) -> float | None:
        """At every ``interval``-th step: r_t over all ranks, then p ← clamp(p + sign(r_t − target) ·
        images / speed). Returns r_t when it adjusted, else None."""
        if step % self.interval or self.count == 0:
            return None
        totals = torch.tensor([self.sign_sum, float(self.count)], dtype=torch.float64)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        r_t = float(totals[0] / totals[1])
        adjust = math.copysign(1.0, r_t - self.target) * images_per_step * self.interval / self.speed_images
        with torch.no_grad():
            self.p.copy_((self.p + adjust).clamp(0.0, 1.0))
        self.sign_sum, self.count = 0.0, 0
        return r_t
