"""StyleGAN2 mapping network (z, c) -> w, with EG3D's camera-label conditioning and truncation.

State-dict names follow StyleGAN2/EG3D: ``embed.{weight,bias}`` (label embedding), ``fc{i}.{weight,
bias}`` (mapping layers, learning-rate multiplier 0.01) and the ``w_avg`` buffer (moving average of
w, the truncation centre).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from avatar4d.models.layers import FullyConnectedLayer
from avatar4d.models.stylegan2.ops import normalize_2nd_moment

logger = logging.getLogger(__name__)


class MappingNetwork(nn.Module):
    """Map a latent ``z`` and a label ``c`` to intermediate latents ``w``.

    ``z`` and the embedded ``c`` are each normalised to unit second moment, concatenated and sent
    through ``num_layers`` lrelu fully-connected layers. With ``num_ws`` set, w is broadcast to
    ``[B, num_ws, w_dim]``; with ``w_avg_beta`` set, a ``w_avg`` buffer tracks the mean w and
    truncation pulls w toward it. ``z_dim=0`` (label only) and ``num_ws=None`` / ``w_avg_beta=None``
    give the discriminator's label mapping.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, *, num_layers: int = 2,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998) -> None:
        super().__init__()
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"mapping needs z_dim > 0 or c_dim > 0, got z_dim={z_dim}, c_dim={c_dim}")
        if num_layers < 1:
            raise ValueError(f"mapping needs at least one layer, got num_layers={num_layers}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)

    def forward(self, z: Tensor | None, c: Tensor | None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> Tensor:
        """z: [B, z_dim], c: [B, c_dim] -> w: [B, num_ws, w_dim] (or [B, w_dim] when num_ws is None).

        ``update_emas`` moves ``w_avg`` toward this batch's mean w (decay ``w_avg_beta``), as the
        training loop does on generator passes. ``truncation_psi`` < 1 lerps the first
        ``truncation_cutoff`` ws (all when None) toward ``w_avg``: psi=0 gives w_avg, psi=1 is a no-op.
        """
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must be [B, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))  # [B, z_dim]
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be [B, {self.c_dim}], got {None if c is None else tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))  # [B, embed]
            x = torch.cat([x, y], dim=1) if x is not None else y  # [B, z_dim + embed]

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # [B, w_dim]

        if update_emas and self.w_avg_beta is not None and self.num_ws is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [B, num_ws, w_dim] (a copy: callers may edit it in place)
        if truncation_psi != 1:
            x = self.truncate(x, truncation_psi, truncation_cutoff)
        return x

    def truncate(self, ws: Tensor, psi: float, cutoff: int | None = None) -> Tensor:
        """Lerp ws [B, num_ws, w_dim] toward ``w_avg``: ``w_avg + psi (w - w_avg)`` for ws[:, :cutoff]."""
        if self.num_ws is None or self.w_avg_beta is None:
            raise ValueError("truncation needs a mapping that tracks w_avg (num_ws and w_avg_beta set)")
        if cutoff is not None and cutoff < 0:
            raise ValueError(f"truncation_cutoff must be >= 0, got {cutoff}")
        truncated = self.w_avg.lerp(ws, psi)
        if cutoff is None or cutoff >= ws.shape[1]:
            return truncated
        return torch.cat([truncated[:, :cutoff], ws[:, cutoff:]], dim=1)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
