"""EG3D's OSG decoder: a tiny MLP from averaged triplane features to density and features.

Structure and parameter names follow the released EG3D / Next3D / Next3D++ decoders exactly
(``net.0.weight [64, 32]``, ``net.0.bias``, ``net.2.weight [33, 64]``, ``net.2.bias``; ``net.1`` is
the parameter-free softplus), so released weights load without renaming.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar4d.models.layers import FullyConnectedLayer

# MipNeRF's widened sigmoid: features land in [-0.001, 1.001] so 0 and 1 are reachable.
_SIGMOID_PADDING = 0.001


class OSGDecoder(nn.Module):
    """Averages the three plane samples, then FC -> softplus -> FC.

    Output channel 0 is the raw density ``sigma`` (activated later by the ray marcher); the other
    ``out_features`` channels are ``sigmoid(x) * (1 + 2 * 0.001) - 0.001``, whose first three are
    the raw RGB image. ``ray_directions`` is accepted for interface compatibility and unused, as in
    EG3D.
    """

    def __init__(self, n_features: int = 32, hidden: int = 64, out_features: int = 32,
                 decoder_lr_mul: float = 1.0) -> None:
        super().__init__()
        if min(n_features, hidden, out_features) <= 0 or decoder_lr_mul <= 0:
            raise ValueError("OSGDecoder sizes and decoder_lr_mul must be positive, got "
                             f"n_features={n_features}, hidden={hidden}, out_features={out_features}, "
                             f"decoder_lr_mul={decoder_lr_mul}")
        self.n_features = n_features
        self.hidden = hidden
        self.out_features = out_features
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden, lr_multiplier=decoder_lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_features, lr_multiplier=decoder_lr_mul),
        )

    def forward(self, plane_samples: Tensor, ray_directions: Tensor | None = None) -> dict[str, Tensor]:
        # plane_samples: [B, 3, N, C]; ray_directions: [B, N, 3] (unused)
        if plane_samples.ndim != 4 or plane_samples.shape[-1] != self.n_features:
            raise ValueError(f"plane samples must be [B, planes, N, {self.n_features}], "
                             f"got {tuple(plane_samples.shape)}")
        x = plane_samples.mean(dim=1)  # [B, N, C]
        batch, num_points, channels = x.shape
        x = self.net(x.reshape(batch * num_points, channels))  # [B*N, 1 + out]
        x = x.reshape(batch, num_points, 1 + self.out_features)  # [B, N, 1 + out]
        features = torch.sigmoid(x[..., 1:]) * (1 + 2 * _SIGMOID_PADDING) - _SIGMOID_PADDING  # [B, N, out]
        return {"sigma": x[..., :1], "rgb": features}
