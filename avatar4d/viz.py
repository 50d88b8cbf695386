"""Image helpers: grids and PNG files (torchvision's ``make_grid``/``save_image``), conversion to
8-bit, labelled contact sheets, and simple mesh shading for previews.

torchvision is imported when a helper runs, not with this module.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def make_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images [N, C, H, W] into one image [C, rows*(H+p)+p, nrow*(W+p)+p] (row-major):
    ``torchvision.utils.make_grid``."""
    from torchvision.utils import make_grid as tv_make_grid

    if images.ndim != 4:
        raise ValueError(f"make_grid expects [N, C, H, W], got {tuple(images.shape)}")
    return tv_make_grid(images, nrow=max(1, nrow), padding=padding, pad_value=pad_value)


def _unit_range(image: Tensor, value_range: tuple[float, float]) -> Tensor:
    low, high = value_range
    return ((image.detach().float().cpu() - low) / (high - low)).clamp(0, 1)


def to_uint8(image: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """[C, H, W] float (C = 1 or 3) → [H, W, 3] uint8, mapping ``value_range`` to 0..255."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [1|3, H, W], got {tuple(image.shape)}")
    array = (_unit_range(image, value_range) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def encode_png(image: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """PNG bytes of an image [C, H, W] (``torchvision.utils.save_image``)."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(_unit_range(image, value_range), buffer, format="png")
    return buffer.getvalue()


def save_png(image: Tensor, path: str | Path, value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_unit_range(image, value_range), path)
    return path


def labelled_grid(images: Tensor, *, nrow: int, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                  value_range: tuple[float, float] = (0.0, 1.0), min_cell: int = 128, title: str = "") -> np.ndarray:
    """A contact sheet [H, W, 3] uint8 of images [N, C, H, W] with row labels on the left, column
    labels on top and an optional title; cells whose shorter side is under ``min_cell`` px are
    enlarged (nearest, at most 16×), so small renders stay judgeable."""
    from PIL import Image, ImageDraw, ImageFont

    n, _, height, width = images.shape
    scale = max(1, min(16, -(-min_cell // min(height, width))))
    if scale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    grid = to_uint8(make_grid(_unit_range(images, value_range), nrow=nrow, padding=4, pad_value=1.0))
    cell_h, cell_w = images.shape[2] + 4, images.shape[3] + 4
    font = ImageFont.load_default()
    line = 14
    left = (max((len(t) for t in row_labels), default=0) * 7 + 8) if row_labels else 0
    top = (line + 4 if col_labels else 0) + (line + 4 if title else 0)
    sheet = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top), "white")
    sheet.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for column, text in enumerate(col_labels[:nrow]):
        draw.text((left + 4 + column * cell_w, top - line - 2), text, fill="black", font=font)
    for row, text in enumerate(row_labels[:-(-n // max(1, nrow))]):
        draw.text((4, top + 4 + row * cell_h + cell_h // 2 - line // 2), text, fill="black", font=font)
    return np.asarray(sheet)


def lambert_shade(normals: Tensor, mask: Tensor, albedo: Tensor, light_dir: Tensor,
                  ambient: float = 0.25, background: float = 1.0) -> Tensor:
    """Shade per-pixel unit normals [B, H, W, 3] with a directional light [B, 3] (pointing from the
    surface to the light) → images [B, 3, H, W] in [0, 1]; ``albedo`` [B, H, W, 3]."""
    diffuse = (normals * light_dir[:, None, None, :]).sum(-1, keepdim=True).clamp(min=0)  # [B,H,W,1]
    color = albedo * (ambient + (1 - ambient) * diffuse)
    color = torch.where(mask, color, torch.full_like(color, background))
    return color.permute(0, 3, 1, 2)
