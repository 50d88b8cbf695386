"""Data statistics a trained VAE carries: the triplane normalisation and the latent scale.

**Triplane normalisation.** The release normalises triplanes per *plane*: its ``final_mean.pt`` /
``final_std.pt`` hold 1 or 4 values, broadcast over ``b f c h w`` (:func:`release_statistics`).
``per="plane"`` (the default, what the release does) pools each plane's channels, pixels and
samples; ``per="plane_channel"`` keeps one value per (plane, channel) (our earlier behaviour, a
finer normalisation the release never used). Either way the model's buffers are [F, C]
(per-plane values broadcast over C), so checkpoints of both kinds load into the same model.

**Latent scale.** Diffusion wants unit-variance latents, so the LDM convention (which the
release's 0.3994218 comes from) sets ``scale_factor = 1 / std(z)`` over a sample of encoded
training data. :func:`estimate_latent_scale` does that for a VAE trained here, on the posterior
means the encode stage stores (``factory/stages/encode.py``); the value lands in the checkpoint's
config (``latent_scale_factor``), which is what the encode stage multiplies by.
"""

from __future__ import annotations

from torch import Tensor

STATISTICS_GRANULARITIES = ("plane", "plane_channel")
"""``plane``: one mean/std per plane (the release); ``plane_channel``: one per (plane, channel)."""

MIN_STD = 1e-4
"""Floor of an estimated standard deviation (a constant plane must not divide by zero)."""


def check_granularity(per: str) -> None:
    if per not in STATISTICS_GRANULARITIES:
        raise ValueError(f"triplane statistics are per one of {list(STATISTICS_GRANULARITIES)}, got {per!r}")


def triplane_statistics(planes: Tensor, per: str = "plane") -> tuple[Tensor, Tensor]:
    """Mean and std of stacked triplanes [N, F, C, R, R] → ([F, 1], [F, 1]) per plane or ([F, C], [F, C]).

    The std is the unbiased estimate over every pooled value, floored at :data:`MIN_STD`.
    """
    check_granularity(per)
    if planes.ndim != 5:
        raise ValueError(f"expected stacked triplanes [N, F, C, R, R], got {tuple(planes.shape)}")
    x = planes.detach().double()
    dims = (0, 2, 3, 4) if per == "plane" else (0, 3, 4)
    mean = x.mean(dim=dims)                               # [F] or [F, C]
    std = x.std(dim=dims).clamp(min=MIN_STD)
    if per == "plane":
        mean, std = mean[:, None], std[:, None]           # [F, 1]: broadcasts over channels like the release's
    return mean.float(), std.float()


def estimate_latent_scale(latents: Tensor) -> float:
    """``1 / std`` of unscaled latents [N, E, F, h, w] (every value pooled; LDM's ``scale_factor``)."""
    if latents.numel() < 2:
        raise ValueError("estimating the latent scale needs at least two latent values")
    std = float(latents.detach().double().std())
    if not std > 0 or std != std:
        raise ValueError(f"the latents have standard deviation {std}; cannot estimate a scale from them")
    return 1.0 / std

