"""The triplane VAE (AvatarArtist's ``AutoencoderKL`` over parametric triplanes).

``encode`` maps a triplane in VAE layout [B, C, F, R, R] to a :class:`DiagonalGaussian` over
latents [B, embed_dim, F, R/2^n, R/2^n]; ``decode`` maps a latent back. ``encode_triplane`` and
``decode_triplane`` work on the stacked layout [B, F, C, R, R] the data factory stores and apply the
optional (plane, channel) normalisation. Parameter names match the released checkpoint except for
its duplicated ``<conv>.weight`` aliases (see :mod:`avatar4d.models.vae.convert`).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.models.vae.config import TriplaneVAEConfig
from avatar4d.models.vae.decoder import TriplaneDecoder
from avatar4d.models.vae.distribution import DiagonalGaussian
from avatar4d.models.vae.encoder import TriplaneEncoder
from avatar4d.models.vae.layers import CHANNELS_LAST, SamePadConv3d
from avatar4d.models.vae.layout import stacked_to_vae_layout, vae_layout_to_stacked

logger = logging.getLogger(__name__)

STATISTICS_KEYS = ("triplane_mean", "triplane_std")
"""Buffers [num_planes, in_channels] present (and saved in the state dict) only with ``normalize_triplanes``."""


def broadcast_statistics(value: Tensor | float, config: TriplaneVAEConfig, name: str = "statistics",
                         positive: bool = False) -> Tensor:
    """``value`` broadcast to a float32 [num_planes, in_channels] tensor (ValueError if it cannot be)."""
    shape = (config.num_planes, config.in_channels)
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    try:
        full = torch.broadcast_to(tensor, shape).clone()
    except RuntimeError:
        raise ValueError(f"triplane {name} of shape {tuple(tensor.shape)} does not broadcast to "
                         f"[num_planes, channels] = {list(shape)}") from None
    if positive and not bool((full > 0).all()):
        raise ValueError(f"triplane {name} must be positive everywhere")
    return full


@dataclasses.dataclass
class VAEOutput:
    reconstruction: Tensor      # [B, C, F, R, R]
    posterior: DiagonalGaussian
    latent: Tensor              # [B, embed_dim, F, r, r], the z that was decoded


class TriplaneVAE(PretrainedMixin, nn.Module, component="triplane_vae"):
    """KL-regularised 3D-conv autoencoder of parametric triplanes (paper preset = the release)."""

    def __init__(self, config: TriplaneVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TriplaneEncoder(config)
        self.decoder = TriplaneDecoder(config)
        self.quant_conv = SamePadConv3d(2 * config.z_channels, 2 * config.embed_dim, 1,
                                        padding_mode=config.padding_mode)
        self.post_quant_conv = SamePadConv3d(config.embed_dim, config.z_channels, 1,
                                             padding_mode=config.padding_mode)
        if config.normalize_triplanes:
            shape = (config.num_planes, config.in_channels)
            self.register_buffer("triplane_mean", torch.zeros(shape))
            self.register_buffer("triplane_std", torch.ones(shape))

    # ----------------------------------------------------------------------------- core model
    def _check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels or x.shape[2] != cfg.num_planes:
            raise ValueError(f"expected a VAE-layout triplane [B, {cfg.in_channels}, {cfg.num_planes}, H, W], got "
                             f"{tuple(x.shape)} (convert [B, F, C, H, W] with stacked_to_vae_layout)")
        factor = cfg.downsample_factor
        if x.shape[3] % factor or x.shape[4] % factor:
            raise ValueError(f"triplane sides {tuple(x.shape[3:])} must be divisible by {factor}")

    def _layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory layout the convolutions run in (``config.channels_last``)."""
        return x.contiguous(memory_format=CHANNELS_LAST) if self.config.channels_last else x

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x [B, C, F, R, R] → posterior over z [B, embed_dim, F, R/2^n, R/2^n]."""
        self._check_input(x)
        h = self.encoder(self._layout(x))               # [B, 2*z, F, r, r]
        moments = self.quant_conv(h).contiguous()       # [B, 2*embed_dim, F, r, r]
        return DiagonalGaussian(moments, logvar_min=self.config.logvar_min, logvar_max=self.config.logvar_max)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, embed_dim, F, r, r] → triplane [B, C, F, r·2^n, r·2^n] (VAE layout)."""
        cfg = self.config
        if z.ndim != 5 or z.shape[1] != cfg.embed_dim or z.shape[2] != cfg.num_planes:
            raise ValueError(f"expected a latent [B, {cfg.embed_dim}, {cfg.num_planes}, h, w], got {tuple(z.shape)} "
                             f"(convert DiT-layout latents with from_dit_tokens)")
        h = self.post_quant_conv(self._layout(z))       # [B, z, F, r, r]
        return self.decoder(h).contiguous()             # [B, C, F, R, R] (contiguous for the caller)

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> VAEOutput:
        # x: [B, C, F, R, R]
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()  # [B, E, F, r, r]
        return VAEOutput(reconstruction=self.decode(z), posterior=posterior, latent=z)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder/decoder stage in backward (activation memory for paper-size training)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    # ----------------------------------------------------------- stacked triplanes + statistics
    def set_triplane_statistics(self, mean: Tensor | float, std: Tensor | float) -> None:
        """Set the normalisation; each argument broadcasts to [num_planes, in_channels].

        A scalar, a per-channel [C], a per-plane [F, 1] (the release's ``final_mean``/``final_std``
        broadcast over planes; see :func:`~avatar4d.models.vae.convert.release_statistics`) or a full [F, C].
        """
        if not self.config.normalize_triplanes:
            raise ValueError("this VAE was built with normalize_triplanes=False; enable it in the config first")
        full_mean = broadcast_statistics(mean, self.config, "mean")
        full_std = broadcast_statistics(std, self.config, "std", positive=True)
        with torch.no_grad():
            self.triplane_mean.copy_(full_mean)
            self.triplane_std.copy_(full_std)

    def _statistics(self, planes: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.config.normalize_triplanes:
            return None
        mean = self.triplane_mean.to(planes.dtype)[None, :, :, None, None]  # [1, F, C, 1, 1]
        std = self.triplane_std.to(planes.dtype)[None, :, :, None, None]
        return mean, std

    def normalize_planes(self, planes: Tensor) -> Tensor:
        """Stacked [B, F, C, R, R] → (planes − mean) / std; the identity without ``normalize_triplanes``."""
        stats = self._statistics(planes)
        return planes if stats is None else (planes - stats[0]) / stats[1]

    def denormalize_planes(self, planes: Tensor) -> Tensor:
        """Inverse of :meth:`normalize_planes` (the release's ``samples * std + mean``)."""
        stats = self._statistics(planes)
        return planes if stats is None else planes * stats[1] + stats[0]

    def encode_triplane(self, planes: Tensor, sample: bool = False,
                        generator: torch.Generator | None = None) -> Tensor:
        """Stacked triplane [B, F, C, R, R] → latent z [B, embed_dim, F, r, r] (posterior mean by default)."""
        posterior = self.encode(stacked_to_vae_layout(self.normalize_planes(planes)))
        return posterior.sample(generator) if sample else posterior.mode()

    def decode_triplane(self, z: Tensor) -> Tensor:
        """Latent z [B, embed_dim, F, r, r] → stacked triplane [B, F, C, R, R] in data units."""
        return self.denormalize_planes(vae_layout_to_stacked(self.decode(z)))
