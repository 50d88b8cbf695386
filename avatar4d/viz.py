"""Image helpers: grids, conversion to 8-bit, PNG files, and simple mesh shading for previews."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def make_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images [N, C, H, W] into one image [C, rows*(H+p)+p, nrow*(W+p)+p] (row-major)."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects [N, C, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = max(1, min(nrow, n))
    nrows = math.ceil(n / ncol)
    grid = images.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for index in range(n):
        row, col = divmod(index, ncol)
        top, left = padding + row * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[index]
    return grid


def to_uint8(image: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """[C, H, W] float (C = 1 or 3) → [H, W, 3] uint8, mapping ``value_range`` to 0..255."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [1|3, H, W], got {tuple(image.shape)}")
    low, high = value_range
    scaled = ((image.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    array = (scaled * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def encode_png(image: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image, value_range)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Tensor, path: str | Path, value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image, value_range))
    return path


def lambert_shade(normals: Tensor, mask: Tensor, albedo: Tensor, light_dir: Tensor,
                  ambient: float = 0.25, background: float = 1.0) -> Tensor:
    """Shade per-pixel unit normals [B, H, W, 3] with a directional light [B, 3] (pointing from the
    surface to the light) → images [B, 3, H, W] in [0, 1]; ``albedo`` [B, H, W, 3]."""
    diffuse = (normals * light_dir[:, None, None, :]).sum(-1, keepdim=True).clamp(min=0)  # [B,H,W,1]
    color = albedo * (ambient + (1 - ambient) * diffuse)
    color = torch.where(mask, color, torch.full_like(color, background))
    return color.permute(0, 3, 1, 2)
