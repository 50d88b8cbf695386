"""Byte codecs: exact tensor round trips per dtype, length checks, PNG round trips."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from avatar4d.data.codec import (
    CodecError,
    decode_png,
    decode_pngs,
    decode_tensor,
    decode_tensors,
    encode_png,
    encode_tensor,
    encode_tensors,
)
from avatar4d.data.schema import TensorSpec


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                                ("float32", torch.float32)])
def test_tensor_round_trip_is_exact_for_the_dtype(dtype, torch_dtype):
    spec = TensorSpec((4, 3, 5, 5), dtype)
    tensor = torch.randn(spec.shape, generator=torch.Generator().manual_seed(0)) * 100
    data = encode_tensor(tensor, spec)
    assert isinstance(data, bytes) and len(data) == spec.nbytes
    back = decode_tensor(data, spec)
    assert back.dtype == torch_dtype and back.shape == spec.shape
    assert torch.equal(back, tensor.to(torch_dtype))
    assert torch.equal(decode_tensor(encode_tensor(back, spec), spec), back)  # stored values are fixed points


def test_bytes_are_little_endian_row_major():
    spec = TensorSpec((2, 2), "float32")
    tensor = torch.tensor([[1.0, 2.0], [3.0, -0.5]])
    assert encode_tensor(tensor, spec) == np.array([1.0, 2.0, 3.0, -0.5], dtype="<f4").tobytes()
    half = TensorSpec((2,), "float16")
    assert encode_tensor(torch.tensor([1.0, -2.0]), half) == np.array([1.0, -2.0], dtype="<f2").tobytes()


def test_batch_helpers_and_memoryview_input():
    spec = TensorSpec((3, 2), "float16")
    batch = torch.randn(5, 3, 2)
    items = encode_tensors(batch, spec)
    assert len(items) == 5
    assert torch.equal(decode_tensors(items, spec), batch.half())
    assert torch.equal(decode_tensor(memoryview(items[1]), spec), batch[1].half())
    assert decode_tensors([], spec).shape == (0, 3, 2)


def test_length_and_shape_are_checked():
    spec = TensorSpec((4, 8, 64, 64), "float16")
    with pytest.raises(CodecError, match="length 10, the spec .* needs 262144"):
        decode_tensor(b"\0" * 10, spec)
    with pytest.raises(CodecError, match="does not match the spec"):
        encode_tensor(torch.zeros(4, 8, 64, 32), spec)
    assert issubclass(CodecError, ValueError)


def test_png_round_trip_maps_minus_one_one_to_bytes():
    image = torch.linspace(-1, 1, 3 * 6 * 7).reshape(3, 6, 7)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.size == (7, 6) and opened.mode == "RGB"
    decoded = decode_png(data)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 6, 7)
    expected = ((image + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    assert torch.equal(decoded, expected)
    assert decoded[0, 0, 0] == 0 and decoded[2, 5, 6] == 255
    assert decode_pngs([data, data]).shape == (2, 3, 6, 7)


def test_png_errors():
    with pytest.raises(CodecError, match="not a readable PNG"):
        decode_png(b"not an image")
    with pytest.raises(CodecError, match=r"\[3, H, W\]"):
        encode_png(torch.zeros(1, 4, 4))
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(CodecError, match="expected a PNG, got JPEG"):
        decode_png(buffer.getvalue())
    with pytest.raises(CodecError, match="different sizes"):
        decode_pngs([encode_png(torch.zeros(3, 4, 4)), encode_png(torch.zeros(3, 5, 4))])


def test_png_compress_level_changes_size_not_pixels():
    image = torch.sin(torch.linspace(0, 40, 3 * 32 * 32)).reshape(3, 32, 32)
    stored, packed = encode_png(image, compress_level=0), encode_png(image, compress_level=9)
    assert len(stored) > len(packed)
    assert torch.equal(decode_png(stored), decode_png(packed))
    with pytest.raises(CodecError, match="compress_level must be 0..9"):
        encode_png(image, compress_level=10)
