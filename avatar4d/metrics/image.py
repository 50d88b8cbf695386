"""Pixel metrics of frames against their ground truth: PSNR and SSIM (torchmetrics' implementations,
imported when called).

Images are float [N, 3, H, W] in [0, 1]; both return one value per image [N] (average them over a
set as the paper does). SSIM is Wang et al.'s: an 11-tap Gaussian window (σ = 1.5), K1 = 0.01,
K2 = 0.03, data range 1, averaged over the valid region and the channels.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pair(prediction: Tensor, target: Tensor) -> None:
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(f"expected two image batches [N, C, H, W] of one shape, got {list(prediction.shape)} "
                         f"and {list(target.shape)}")


@torch.no_grad()
def psnr(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image [N] (identical images: +inf)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(prediction, target)
    return peak_signal_noise_ratio(prediction.double(), target.double(), data_range=data_range, dim=(1, 2, 3),
                                   reduction="none").float()


@torch.no_grad()
def ssim(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image [N] (1 for identical images)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(prediction, target)
    if min(prediction.shape[-2:]) < 11:
        raise ValueError(f"SSIM's 11-pixel window needs images of at least 11², got {list(prediction.shape[-2:])}")
    return structural_similarity_index_measure(prediction.double(), target.double(), data_range=data_range,
                                               reduction="none").float()
