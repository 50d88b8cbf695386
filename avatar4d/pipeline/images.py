"""Portrait bytes → a checked uint8 image: the one decoder the CLI and the HTTP service share.

Pillow decodes (PNG, JPEG, WebP, BMP, ...); every way an upload can be wrong is a one-line
:class:`InvalidImageError` (not an image, truncated, too small, over the pixel limit). The pixel
limit is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar4d.errors import UserError

MIN_SIDE = 16


class InvalidImageError(UserError):
    """The bytes are not a usable portrait."""


def decode_image(data: bytes, *, max_pixels: int, what: str = "the upload") -> np.ndarray:
    """Image bytes → RGB uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImageError(f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(f"{what} is {width}×{height} = {width * height:,} pixels; the limit is "
                                        f"{max_pixels:,}")
            if min(width, height) < MIN_SIDE:
                raise InvalidImageError(f"{what} is {width}×{height}; portraits need at least {MIN_SIDE}×{MIN_SIDE} "
                                        "pixels")
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise InvalidImageError(f"{what} is not an image (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError:
        raise InvalidImageError(f"{what} is over the pixel limit ({max_pixels:,})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{what} is a corrupt or truncated image ({str(exc).splitlines()[0][:100]})") from None
    return array


def square_portrait(image: np.ndarray, size: int) -> Tensor:
    """RGB uint8 [H, W, 3] → the centred square crop resized to ``size``: uint8 [3, size, size]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = torch.from_numpy(np.array(image[top:top + side, left:left + side])).permute(2, 0, 1)  # a writable copy
    if side == size:
        return crop.contiguous()
    resized = F.interpolate(crop[None].float(), size=(size, size), mode="bicubic", align_corners=False,
                            antialias=True)[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def encode_png(frame: np.ndarray) -> bytes:
    """uint8 [H, W, 3] → PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
