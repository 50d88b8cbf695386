import math

import pytest
import torch
import torch.nn.functional as F

from avatar4d.models.stylegan2.ops import (
    conv2d_resample,
    downsample2d,
    filter2d,
    gaussian_blur,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

FIR = setup_filter([1, 3, 3, 1])


def _smooth_image(size: int, period: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    return (torch.sin(2 * math.pi * x / period) * torch.cos(2 * math.pi * y / period))[None, None]


def test_setup_filter_is_normalised_outer_product():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    assert FIR.shape == (4, 4)
    torch.testing.assert_close(FIR, torch.outer(taps, taps) / 64)
    assert FIR.sum().item() == pytest.approx(1.0)
    assert setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4.0)
    assert setup_filter([1] * 8).shape == (8,)  # >= 8 taps -> separable
    with pytest.raises(ValueError):
        setup_filter([])


def test_upfirdn2d_is_a_true_convolution_with_gain():
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 1.0
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = upfirdn2d(impulse, f, padding=[1, 0, 1, 0])  # impulse response = the filter itself
    torch.testing.assert_close(out[0, 0, 2:4, 2:4], f)
    assert out.sum().item() == pytest.approx(10.0)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(upfirdn2d(x, FIR, padding=2, gain=2.5), 2.5 * upfirdn2d(x, FIR, padding=2))
    # a 1-D filter is applied separably and equals its outer product
    taps = torch.tensor([1.0, 2.0, 1.0]) / 4
    torch.testing.assert_close(upfirdn2d(x, taps, padding=1), upfirdn2d(x, torch.outer(taps, taps), padding=1))


def test_constant_image_stays_constant_away_from_borders():
    const = torch.full((1, 2, 16, 16), 3.7)
    up = upsample2d(const, FIR)
    assert up.shape == (1, 2, 32, 32)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.7))
    assert up[0, 0, 0, 0].item() < 3.7  # zero padding shows at the border only
    down = downsample2d(const, FIR)
    assert down.shape == (1, 2, 8, 8)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.7))
    same = filter2d(const, FIR)
    assert same.shape == const.shape
    torch.testing.assert_close(same[..., 2:-2, 2:-2], torch.full_like(same[..., 2:-2, 2:-2], 3.7))


def test_upsample_then_downsample_is_near_identity_on_smooth_input():
    img = _smooth_image(32, period=32)
    back = downsample2d(upsample2d(img, FIR), FIR)
    assert back.shape == img.shape
    assert (back - img)[..., 4:-4, 4:-4].abs().max().item() < 0.02
    # higher frequencies are attenuated more: a low-pass round trip
    img_hf = _smooth_image(32, period=8)
    err_hf = (downsample2d(upsample2d(img_hf, FIR), FIR) - img_hf)[..., 4:-4, 4:-4].abs().max().item()
    assert err_hf > 0.05


def test_conv2d_resample_with_identity_kernel_equals_fir_resampling():
    x = torch.randn(2, 3, 8, 8)
    identity = torch.zeros(3, 3, 3, 3)
    for c in range(3):
        identity[c, c, 1, 1] = 1.0
    torch.testing.assert_close(conv2d_resample(x, identity, FIR, up=2, padding=1, flip_weight=False),
                               upsample2d(x, FIR), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(conv2d_resample(x, identity, FIR, down=2, padding=1), downsample2d(x, FIR),
                               atol=1e-6, rtol=1e-5)
    w = torch.randn(5, 3, 3, 3)
    torch.testing.assert_close(conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))
    assert conv2d_resample(x, torch.randn(5, 3, 1, 1), FIR, down=2).shape == (2, 5, 4, 4)


def _reference_modulated_conv(x, weight, styles, demodulate):
    """Explicit formula: w'[b,o,i,k] = w[o,i,k] s[b,i]; w'' = w' / sqrt(sum_{i,k} w'^2 + 1e-8);
    y[b,o,p] = sum_{i,k} w''[b,o,i,k] x_pad[b,i,p+k]."""
    batch, _, height, width = x.shape
    kh = weight.shape[2]
    wmod = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        wmod = wmod / torch.sqrt(wmod.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8)
    xpad = F.pad(x, [kh // 2] * 4)
    out = torch.zeros(batch, weight.shape[0], height, width)
    for ky in range(kh):
        for kx in range(kh):
            patch = xpad[:, :, ky:ky + height, kx:kx + width]
            out += torch.einsum("boi,bihw->bohw", wmod[:, :, :, ky, kx], patch)
    return out


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_explicit_formula(demodulate, fused):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(2, 3)
    out = modulated_conv2d(x, weight, styles, padding=1, demodulate=demodulate, fused=fused)
    torch.testing.assert_close(out, _reference_modulated_conv(x, weight, styles, demodulate), atol=1e-5, rtol=1e-4)


def test_demodulation_normalises_output_scale_and_noise_is_added():
    torch.manual_seed(1)
    x, weight, styles = torch.randn(3, 16, 8, 8), torch.randn(8, 16, 3, 3), torch.randn(3, 16)
    out = modulated_conv2d(x, weight, styles, padding=1)
    # demodulation makes the output invariant to the style scale
    torch.testing.assert_close(modulated_conv2d(x, weight, 7.0 * styles, padding=1), out, atol=1e-4, rtol=1e-4)
    # with unit-variance i.i.d. input the demodulated output has unit variance
    big = modulated_conv2d(torch.randn(4, 16, 32, 32), weight, torch.randn(4, 16), padding=1)
    assert big.std().item() == pytest.approx(1.0, abs=0.1)
    noise = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(modulated_conv2d(x, weight, styles, padding=1, noise=noise), out + noise)
    up = modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=FIR, flip_weight=False)
    up_unfused = modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=FIR, flip_weight=False,
                                  fused=False)
    assert up.shape == (3, 8, 16, 16)
    torch.testing.assert_close(up, up_unfused, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        modulated_conv2d(x, weight, torch.randn(3, 15))


def test_gaussian_blur_and_normalize_2nd_moment():
    x = torch.randn(2, 3, 32, 32)
    assert gaussian_blur(x, 0.0) is x
    assert gaussian_blur(x, 0.3) is x  # floor(3 sigma) = 0 taps -> no blur (EG3D semantics)
    blurred = gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std().item() < 0.5 * x.std().item()
    const = torch.full((1, 1, 32, 32), 2.0)
    torch.testing.assert_close(gaussian_blur(const, 2.0)[..., 6:-6, 6:-6], torch.full((1, 1, 20, 20), 2.0))
    with pytest.raises(ValueError):
        gaussian_blur(x, -1.0)
    z = torch.randn(4, 10) * 5
    assert normalize_2nd_moment(z).square().mean(dim=1).tolist() == pytest.approx([1.0] * 4, rel=1e-5)
