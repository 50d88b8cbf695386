"""Per-identity appearance drawn from the world's latent, and the domains' material patterns.

The latent after the identity coefficients is mapped through the normal CDF to values in (0, 1),
so truncation (w = ψ·z) pulls every attribute towards its domain's middle, as it pulls a GAN's
samples towards the average face. Colours are linear RGB in [0, 1]; the planes store their logits.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from avatar4d.world.styles import DomainStyle

APPEARANCE_DIM = 14  # latent values after the identity coefficients that the appearance reads
PUPIL = (0.03, 0.02, 0.02)
MOUTH_INTERIOR = (0.16, 0.03, 0.05)
CELL_PALETTE = ((0.85, 0.15, 0.15), (0.15, 0.35, 0.85), (0.95, 0.80, 0.15), (0.15, 0.65, 0.30),
                (0.60, 0.20, 0.75), (0.95, 0.50, 0.10))


def smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    """0 at ``edge0``, 1 at ``edge1`` (either order), cubic in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def rgb_logit(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] → the logit the decoder's sigmoid maps back to it (clamped to [0.02, 0.98])."""
    rgb = rgb.clamp(0.02, 0.98)
    return torch.log(rgb) - torch.log1p(-rgb)


def _colour(values, like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


@dataclasses.dataclass
class Appearance:
    """Colours [B, 3] and scalars [B] of a batch of identities in one domain."""

    skin: Tensor
    hair: Tensor
    brows: Tensor
    lips: Tensor
    iris: Tensor
    sclera: Tensor
    pupil: Tensor
    nostril: Tensor
    mouth: Tensor
    hairline: Tensor
    blush: Tensor
    brow: Tensor
    eye_size: Tensor
    phase: Tensor  # [B, 3]: two pattern phases and an orientation
    shading: Tensor

    @property
    def batch(self) -> int:
        return self.skin.shape[0]

    @classmethod
    def from_latent(cls, latent: Tensor, style: DomainStyle) -> Appearance:
        """latent [B, ≥ APPEARANCE_DIM] → the identities' appearance in ``style``."""
        if latent.shape[-1] < APPEARANCE_DIM:
            raise ValueError(f"the appearance needs {APPEARANCE_DIM} latent values, got {latent.shape[-1]}")
        u = 0.5 * (1 + torch.erf(latent[:, :APPEARANCE_DIM].float() / math.sqrt(2)))  # [B, 14] in (0, 1)
        col = lambda values: _colour(values, u)[None]  # noqa: E731  [1, 3]
        unit = lambda i: u[:, i:i + 1]  # noqa: E731  [B, 1]
        skin = torch.lerp(col(style.skin_dark), col(style.skin_light), unit(0))
        skin = skin * (1 + 0.12 * (unit(1) - 0.5) * col((1.0, -0.4, -1.0)))
        hair = torch.lerp(col(style.hair_dark), col(style.hair_light), unit(2) ** 1.5)
        hair = hair * (0.85 + 0.3 * unit(3))
        brows = col(style.brows).expand_as(hair) if style.brows else hair * 0.7
        lips = col(style.lips) * (0.85 + 0.3 * unit(6))
        iris = torch.lerp(col(style.iris_a), col(style.iris_b), unit(5))
        batch = u.shape[0]

        def saturate(rgb: Tensor) -> Tensor:
            grey = rgb.mean(-1, keepdim=True)
            return (grey + style.saturation * (rgb - grey)).clamp(0.02, 0.98)

        return cls(
            skin=saturate(skin), hair=saturate(hair), brows=saturate(brows), lips=saturate(lips),
            iris=saturate(iris), sclera=saturate(col(style.sclera).expand(batch, 3)),
            pupil=col(PUPIL).expand(batch, 3), nostril=saturate(skin * 0.45),
            mouth=saturate(col(MOUTH_INTERIOR).expand(batch, 3)),
            hairline=0.10 + 0.10 * u[:, 4], blush=u[:, 7], brow=0.006 + 0.008 * u[:, 8],
            eye_size=0.85 + 0.3 * u[:, 9], phase=torch.stack([u[:, 10] * 2 * math.pi, u[:, 11] * 2 * math.pi,
                                                             u[:, 12] * math.pi], dim=1),
            shading=style.shading * (0.8 + 0.4 * u[:, 13]))


class PatternField:
    """A domain's material pattern on the frontal plane: intensity in [0, 1] and how it colours."""

    def __init__(self, style: DomainStyle) -> None:
        self.style = style
        self.frequency = 2 * math.pi * style.pattern_frequency  # radians per world unit

    def quantise(self, coordinate: Tensor) -> Tensor:
        """Pixel-art domains paint on a coarse grid: coordinates snap to its cell centres."""
        if self.style.pattern != "pixel":
            return coordinate
        cells = self.style.pattern_frequency
        return (torch.floor(coordinate * cells) + 0.5) / cells

    def __call__(self, x: Tensor, y: Tensor, look: Appearance) -> Tensor:
        """Pattern intensity at points (x, y) [B, R, R] → [B, R, R]."""
        kind, f = self.style.pattern, self.frequency
        p1, p2, angle = (look.phase[:, i, None, None] for i in range(3))
        if kind == "marble":
            t = f * (x * torch.cos(angle) + y * torch.sin(angle)) + 1.6 * torch.sin(0.55 * f * (x - y) + p1) \
                + 0.9 * torch.sin(1.3 * f * (x + 0.4 * y) + p2)
            return torch.exp(-10 * torch.sin(t / 2) ** 2)
        if kind == "cells":
            across = torch.exp(-25 * torch.sin(f * x / 2 + p1 + 0.4 * torch.sin(f * y / 2)) ** 2)
            down = torch.exp(-25 * torch.sin(f * y / 2 + p2) ** 2)
            return torch.maximum(across, down)
        if kind == "stripes":
            return 0.5 + 0.5 * torch.sin(f * y + p1 + 0.3 * torch.sin(f * x / 2))
        if kind == "hatch":
            return smoothstep(0.3, 0.7, 0.5 + 0.5 * torch.sin(f * (x + y) + p1))
        if kind == "spots":
            field = torch.sin(f * x + p1) * torch.sin(f * y + p2) + 0.3 * torch.sin(0.5 * f * (x + y) + p2)
            return smoothstep(0.55, 0.8, field)
        return torch.zeros_like(x + y)

    def apply(self, rgb: Tensor, pattern: Tensor, x: Tensor, y: Tensor, look: Appearance) -> Tensor:
        """Colour ``rgb`` [B, 3, R, R] by the pattern (stained glass also tints each cell)."""
        style = self.style
        if style.pattern == "cells":
            f = self.frequency
            p1, p2 = look.phase[:, 0, None, None], look.phase[:, 1, None, None]
            column = torch.floor((f * x / 2 + p1 + 0.4 * torch.sin(f * y / 2)) / math.pi)
            row = torch.floor((f * y / 2 + p2) / math.pi)
            index = torch.remainder(column + 3 * row, len(CELL_PALETTE)).long()  # [B, R, R]
            palette = _colour(CELL_PALETTE, rgb)[index].permute(0, 3, 1, 2)  # [B, 3, R, R]
            rgb = torch.lerp(rgb, palette, 0.55)
        if style.pattern_strength > 0 and style.pattern not in ("none", "pixel"):
            target = _colour(style.pattern_color, rgb)[None, :, None, None]
            rgb = torch.lerp(rgb, target.expand_as(rgb), (style.pattern_strength * pattern)[:, None])
        return rgb
