"""Tensor layouts around the triplane VAE, and the latent scale.

Three layouts meet here:

- **stacked** parametric triplane ``[B, F, C, R, R]`` (plane, channel), what the data factory
  stores (:meth:`avatar4d.rendering.parametric.ParametricTriplane.stacked`: plane 0 = UV
  neural texture, planes 1–3 = static triplane);
- **VAE layout** ``[B, C, F, R, R]`` (einops ``b c f h w``): channels first so 3D convolutions run
  over (plane, H, W); every stride is (1, 2, 2), so F stays 4 everywhere;
- **DiT layout** ``[B, C, F·h, w]`` (``b c (f h) w``): the latent's planes stacked along H, as the
  release feeds its DiT (paper: [B, 8, 4, 32, 32] → [B, 8, 128, 32] → 1,024 patch-2 tokens).

Latents are multiplied by ``scale_factor`` (release 0.3994218) before diffusion and divided by it
before decoding.
"""

from __future__ import annotations

from torch import Tensor

from avatar4d.models.vae.config import LATENT_SCALE_FACTOR


def _check_ndim(x: Tensor, ndim: int, what: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def stacked_to_vae_layout(planes: Tensor) -> Tensor:
    """[B, F, C, R, R] (plane, channel) → [B, C, F, R, R] (``b f c h w -> b c f h w``)."""
    _check_ndim(planes, 5, "stacked triplane [B, F, C, R, R]")
    return planes.transpose(1, 2)


def vae_layout_to_stacked(x: Tensor) -> Tensor:
    """[B, C, F, R, R] → [B, F, C, R, R] (``b c f h w -> b f c h w``)."""
    _check_ndim(x, 5, "VAE-layout triplane [B, C, F, R, R]")
    return x.transpose(1, 2)


def to_dit_tokens(z: Tensor) -> Tensor:
    """Latent [B, C, F, h, w] → DiT input [B, C, F·h, w] (``b c f h w -> b c (f h) w``)."""
    _check_ndim(z, 5, "latent [B, C, F, h, w]")
    b, c, f, h, w = z.shape
    return z.reshape(b, c, f * h, w)


def from_dit_tokens(x: Tensor, num_planes: int = 4) -> Tensor:
    """DiT layout [B, C, F·h, w] → latent [B, C, F, h, w] (``b c (f h) w -> b c f h w``)."""
    _check_ndim(x, 4, "DiT-layout latent [B, C, F*h, w]")
    b, c, fh, w = x.shape
    if num_planes < 1 or fh % num_planes:
        raise ValueError(f"height {fh} of the DiT-layout latent is not a multiple of num_planes={num_planes}")
    return x.reshape(b, c, num_planes, fh // num_planes, w)


def scale_latent(z: Tensor, scale_factor: float = LATENT_SCALE_FACTOR) -> Tensor:
    """VAE latent → diffusion space (z · scale_factor)."""
    return z * scale_factor


def unscale_latent(z: Tensor, scale_factor: float = LATENT_SCALE_FACTOR) -> Tensor:
    """Diffusion space → VAE latent (z / scale_factor), what the release does before ``decode``."""
    return z / scale_factor
