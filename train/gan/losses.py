"""The per-domain fine-tune's losses (EG3D's ``StyleGAN2Loss``, the parts the paper uses).

- generator: non-saturating logistic, softplus(−D(G(z, c)));
- discriminator: softplus(D(G(z, c))) + softplus(−D(x));
- lazy R1 (γ = 5): every ``r1_interval`` steps, γ/2 · ‖∇ D(x)‖² over the final and the raw real
  image, times the interval (Mescheder et al. 2018; StyleGAN2's lazy regularisation);
- density regulariser (0.25): every ``density_interval`` steps, the L1 difference of the decoder's
  σ at random points of the triplane box and at the same points moved by N(0, ``p_dist``²), times
  the interval (EG3D's ``density_reg`` "l1");
- decreasing D-input blur: σ = ``blur_init_sigma`` · max(0, 1 − images / ``blur_fade_images``) px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.rendering.planes import sample_planes


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic loss of the generator: mean softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss of the discriminator: mean softplus(D(fake)) + mean softplus(−D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_from_logits(real_logits: Tensor, image: Tensor, image_raw: Tensor) -> Tensor:
    """‖∇ D(x)‖² per sample [B] over both inputs of the dual discriminator (``image`` and
    ``image_raw`` must require grad and have produced ``real_logits`` [B, 1]); the graph is kept,
    so the penalty trains D."""
    grad_image, grad_raw = torch.autograd.grad(real_logits.sum(), [image, image_raw], create_graph=True)
    return grad_image.square().sum(dim=(1, 2, 3)) + grad_raw.square().sum(dim=(1, 2, 3))


def density_regularizer(planes: Tensor, decoder: nn.Module, *, convention: str, box_warp: float, points: int,
                        p_dist: float, generator: torch.Generator | None = None) -> Tensor:
    """Mean |σ(x) − σ(x + ε)| at ``points`` uniform points of the box per sample, ε ~ N(0, p_dist²).
    planes [B, 3, C, R, R] (the expression-specific planes the generator rendered)."""
    b = planes.shape[0]
    initial = (torch.rand(b, points, 3, generator=generator) * 2 - 1) * (box_warp / 2)  # [B, N, 3]
    perturbed = initial + torch.randn(b, points, 3, generator=generator) * p_dist
    coords = torch.cat([initial, perturbed], dim=1).to(planes.device, planes.dtype)  # [B, 2N, 3]
    sigma = decoder(sample_planes(planes, coords, convention, box_warp))["sigma"]  # [B, 2N, 1]
    return F.l1_loss(sigma[:, :points], sigma[:, points:])


def blur_sigma(images_seen: int, init_sigma: float, fade_images: int) -> float:
    """The D-input blur (px) after ``images_seen`` images: linear fade from ``init_sigma`` to 0."""
    if init_sigma <= 0 or fade_images <= 0:
        return 0.0
    return init_sigma * max(0.0, 1.0 - images_seen / fade_images)


def downsample_to(images: Tensor, resolution: int) -> Tensor:
    """images [B, 3, S, S] → [B, 3, r, r] (antialiased), the real counterpart of the raw neural render."""
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def image_statistics(images: Tensor) -> Tensor:
    """[10] colour statistics of images [B, 3, H, W] in [-1, 1]: per-channel mean and std over all
    pixels, the mean luminance-gradient magnitude (texture) and the mean saturation (chroma spread),
    the quantities by which the world's domains differ most."""
    x = images.float()
    mean = x.mean(dim=(0, 2, 3))  # [3]
    std = x.std(dim=(0, 2, 3))  # [3]
    luma = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]).sum(1)  # [B, H, W]
    gradient = (luma[:, 1:, :-1] - luma[:, :-1, :-1]).abs().mean() + (luma[:, :-1, 1:] - luma[:, :-1, :-1]).abs().mean()
    chroma = (x - x.mean(dim=1, keepdim=True)).abs().mean()
    spread = x.amax(dim=1).sub(x.amin(dim=1)).mean()
    return torch.cat([mean, std, torch.stack([gradient, chroma, spread, luma.std()])])


def statistics_distance(a: Tensor, b: Tensor) -> float:
    """Euclidean distance between the :func:`image_statistics` of two image sets."""
    return float(math.sqrt(float((image_statistics(a) - image_statistics(b)).square().sum())))
