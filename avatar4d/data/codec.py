"""Byte codecs of the dataset columns (torch + numpy + Pillow only).

Tensors are raw little-endian bytes in the dtype of their :class:`TensorSpec` (row-major, the
spec's shape); bfloat16 travels as its 16-bit pattern. Images are 8-bit RGB PNGs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from avatar4d.data.schema import TensorSpec
from avatar4d.viz import to_uint8

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# the integer view used to move each dtype through numpy, and its little-endian numpy type
_BIT_VIEWS = {"float16": (torch.int16, "<i2"), "bfloat16": (torch.int16, "<i2"), "float32": (torch.int32, "<i4")}


class CodecError(ValueError):
    """Bytes that do not decode to what the schema says (wrong length, not a PNG)."""


def torch_dtype(spec: TensorSpec) -> torch.dtype:
    return _TORCH_DTYPES[spec.dtype]


def encode_tensor(tensor: Tensor, spec: TensorSpec) -> bytes:
    """``tensor`` (shape ``spec.shape``, any float dtype, any device) → little-endian bytes in ``spec.dtype``."""
    if tuple(tensor.shape) != spec.shape:
        raise CodecError(f"tensor of shape {list(tensor.shape)} does not match the spec {list(spec.shape)}")
    int_dtype, numpy_dtype = _BIT_VIEWS[spec.dtype]
    bits = tensor.detach().to(device="cpu", dtype=torch_dtype(spec)).contiguous().view(int_dtype)
    return bits.numpy().astype(numpy_dtype, copy=False).tobytes()


def decode_tensor(data: bytes | bytearray | memoryview, spec: TensorSpec) -> Tensor:
    """Inverse of :func:`encode_tensor`: a new CPU tensor of ``spec.shape`` and ``spec.dtype``."""
    if len(data) != spec.nbytes:
        raise CodecError(f"tensor bytes have length {len(data)}, the spec {list(spec.shape)} {spec.dtype} "
                         f"needs {spec.nbytes}")
    int_dtype, numpy_dtype = _BIT_VIEWS[spec.dtype]
    array = np.frombuffer(data, dtype=numpy_dtype).astype(numpy_dtype[1:], copy=True)  # native byte order
    return torch.from_numpy(array).view(torch_dtype(spec)).reshape(spec.shape)


def encode_tensors(batch: Tensor, spec: TensorSpec) -> list[bytes]:
    """``batch`` [B, *spec.shape] → one byte string per item."""
    return [encode_tensor(item, spec) for item in batch]


def decode_tensors(items: Sequence[bytes], spec: TensorSpec) -> Tensor:
    """A list of byte strings → [B, *spec.shape]."""
    if not items:
        return torch.empty((0, *spec.shape), dtype=torch_dtype(spec))
    return torch.stack([decode_tensor(item, spec) for item in items])


def encode_png(image: Tensor, compress_level: int = 6) -> bytes:
    """``image`` [3, H, W] in [-1, 1] (the generator's range) → 8-bit RGB PNG bytes.

    The 8-bit conversion is :func:`avatar4d.viz.to_uint8` (as in ``viz.encode_png``).
    ``compress_level`` is zlib's 0-9; measured on a 512² portrait: level 1 is 3.6× faster than the
    default 6 (18 vs 65 ms) for 7 % more bytes (431 vs 403 kB).
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[0] != 3:
        raise CodecError(f"encode_png expects an image [3, H, W], got {list(image.shape)}")
    if not 0 <= compress_level <= 9:
        raise CodecError(f"compress_level must be 0..9, got {compress_level}")
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image, (-1.0, 1.0))).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes | bytearray | memoryview) -> Tensor:
    """PNG bytes → uint8 tensor [3, H, W] (RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            if image.format != "PNG":
                raise CodecError(f"expected a PNG, got {image.format}")
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise CodecError(f"image bytes are not a readable PNG ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_pngs(items: Sequence[bytes]) -> Tensor:
    """A list of PNGs of equal size → uint8 [B, 3, H, W]."""
    images = [decode_png(item) for item in items]
    if len({tuple(image.shape) for image in images}) > 1:
        raise CodecError("PNGs in one batch have different sizes")
    return torch.stack(images) if images else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
