"""Input embeddings of the DiT: patches, timesteps and the fixed 2-D sin-cos positions.

Positions follow the MAE/DiT convention the release uses: the first half of the channels encodes
the column (w) coordinate, the second half the row (h) coordinate, each as [sin, cos] over
frequencies ``1 / 10000^(k / (D/4))``. The values are computed in float64 with numpy (as the
release does) and rounded to float32, so the ``release`` grid reproduces the released buffer
bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """[M] positions → [M, embed_dim] as [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(-k/(embed_dim/2))."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def token_coordinates(token_grid: tuple[int, int], grid: str) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) coordinate of every token, in token order, for a positional grid mode.

    ``"true"``: token m = (m // cols, m % cols) with unit spacing. ``"release"``: the released model's
    quirk: a ``√T×√T`` grid scaled to the base size (rows, cols), i.e. token m gets
    row = (m // √T)·rows/√T and column = (m % √T)·cols/√T (for 64×16 tokens: 2·(m // 32) and (m % 32)/2).
    """
    rows, cols = token_grid
    if grid == "true":
        row_axis = np.arange(rows, dtype=np.float32)
        col_axis = np.arange(cols, dtype=np.float32)
    elif grid == "release":
        side = math.isqrt(rows * cols)
        if side * side != rows * cols:
            raise ValueError(f"the release positional grid needs a square token count, got {rows}×{cols}")
        row_axis = np.arange(side, dtype=np.float32) / np.float32(side / rows)
        col_axis = np.arange(side, dtype=np.float32) / np.float32(side / cols)
    else:
        raise ValueError(f"unknown positional grid {grid!r}; use 'release' or 'true'")
    row_coord, col_coord = np.meshgrid(row_axis, col_axis, indexing="ij")
    return row_coord.reshape(-1), col_coord.reshape(-1)


def sincos_pos_embed_2d(embed_dim: int, token_grid: tuple[int, int], grid: str = "true") -> Tensor:
    """Fixed positional embedding [T, embed_dim] (float32) for the tokens of ``token_grid``."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    row_coord, col_coord = token_coordinates(token_grid, grid)
    embedding = np.concatenate([sincos_1d(embed_dim // 2, col_coord), sincos_1d(embed_dim // 2, row_coord)], axis=1)
    return torch.from_numpy(embedding).float()


def timestep_frequencies(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B] (possibly fractional) timesteps → [B, dim] float32 as [cos, sin] (GLIDE/PixArt order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens: [B, C, H, W] → [B, (H/p)·(W/p), D] in row-major order."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] → [B, h·w, D]


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features → MLP (Linear, SiLU, Linear): [B] → [B, D]."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        features = timestep_frequencies(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
