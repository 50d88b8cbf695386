"""Volume compositing along rays: EG3D's ``MipRayMarcher2``.

Samples are averaged into midpoints between consecutive depths; the raw density there is
activated as ``softplus(sigma + density_bias)`` (EG3D: bias -1, "makes things initialize
better"), ``alpha = 1 - exp(-density * delta)``, ``weight = alpha * transmittance`` with the
transmittance ``prod(1 - alpha + 1e-10)`` of the midpoints in front. Features and depth are
weight-averaged (depth divided by the total weight; a ray with zero weight gets +inf, which is
then clamped to the ray's sample range), an optional white background adds ``1 - total weight``,
and every composited feature is mapped from [0, 1] to [-1, 1].

The depth clamp uses each ray's own sample range by default, so a render does not depend on the
rest of its batch; EG3D/Next3D++ clamp to the whole batch's range (``torch.clamp(depth,
torch.min(depths), torch.max(depths))`` in ``ray_marcher.py``), which
:class:`~avatar4d.rendering.renderer.TriplaneRenderer` applies after compositing with
``clamp_depth=False`` here when ``RenderingConfig.batch_statistics`` is set. Compositing runs in float32.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

CLAMP_MODES = ("softplus", "relu")
_TRANSMITTANCE_EPS = 1e-10
_MIN_OPACITY = 1e-30


@dataclasses.dataclass
class RayMarchResult:
    """features [B, R, C] in [-1, 1]; depth [B, R]; weights [B, R, S-1] (per midpoint);
    opacity [B, R] (sum of the weights, in [0, 1])."""

    features: Tensor
    depth: Tensor
    weights: Tensor
    opacity: Tensor


def activate_density(sigma: Tensor, clamp_mode: str = "softplus", density_bias: float = -1.0) -> Tensor:
    """Non-negative density from the decoder's raw ``sigma``."""
    if clamp_mode == "softplus":
        return F.softplus(sigma + density_bias)
    if clamp_mode == "relu":
        return F.relu(sigma + density_bias)
    raise ValueError(f"unknown clamp_mode {clamp_mode!r}; choose from {list(CLAMP_MODES)}")


def march_rays(colors: Tensor, densities: Tensor, depths: Tensor, *, clamp_mode: str = "softplus",
               density_bias: float = -1.0, white_back: bool = False, clamp_depth: bool = True) -> RayMarchResult:
    """Composite samples sorted by depth: colors [B, R, S, C] (in [0, 1]), raw densities [B, R, S],
    depths [B, R, S] -> :class:`RayMarchResult`."""
    if depths.shape[2] < 2:
        raise ValueError(f"ray marching needs at least 2 samples per ray, got {depths.shape[2]}")
    colors, densities, depths = colors.float(), densities.float(), depths.float()
    deltas = depths[:, :, 1:] - depths[:, :, :-1]  # [B, R, S-1]
    colors_mid = 0.5 * (colors[:, :, :-1] + colors[:, :, 1:])  # [B, R, S-1, C]
    sigma_mid = 0.5 * (densities[:, :, :-1] + densities[:, :, 1:])  # [B, R, S-1]
    depths_mid = 0.5 * (depths[:, :, :-1] + depths[:, :, 1:])  # [B, R, S-1]

    alpha = 1.0 - torch.exp(-activate_density(sigma_mid, clamp_mode, density_bias) * deltas)  # [B, R, S-1]
    survive = torch.cat([torch.ones_like(alpha[:, :, :1]), 1.0 - alpha + _TRANSMITTANCE_EPS], dim=2)
    transmittance = torch.cumprod(survive, dim=2)[:, :, :-1]  # [B, R, S-1]
    weights = alpha * transmittance  # [B, R, S-1]

    opacity = weights.sum(dim=2)  # [B, R]
    features = torch.sum(weights[..., None] * colors_mid, dim=2)  # [B, R, C]
    weighted_depth = torch.sum(weights * depths_mid, dim=2)  # [B, R]
    # EG3D divides by the total weight and turns 0/0 into +inf; `where` does the same without a
    # NaN gradient on fully transparent rays.
    depth = torch.where(opacity > 0, weighted_depth / opacity.clamp_min(_MIN_OPACITY),
                        torch.full_like(opacity, float("inf")))
    if clamp_depth:  # per ray; without it a transparent ray keeps +inf for the caller's batch-wide clamp
        depth = torch.minimum(torch.maximum(depth, depths.amin(dim=2)), depths.amax(dim=2))
    if white_back:
        features = features + (1.0 - opacity)[..., None]
    return RayMarchResult(features=features * 2.0 - 1.0, depth=depth, weights=weights, opacity=opacity)
