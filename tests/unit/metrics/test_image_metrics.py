"""PSNR and SSIM against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.metrics.image import psnr, ssim


def test_psnr_of_a_constant_offset_is_minus_ten_log_of_its_square():
    target = torch.full((2, 3, 16, 16), 0.25)
    for offset in (0.1, 0.01):
        expected = -10 * math.log10(offset ** 2)  # 20 dB, 40 dB
        assert psnr(target + offset, target) == pytest.approx(torch.full((2,), expected), abs=1e-4)


def test_psnr_averages_the_squared_error_over_each_image_separately():
    target = torch.zeros(2, 3, 8, 8)
    prediction = target.clone()
    prediction[0, :, :4] = 0.2  # half the pixels off by 0.2 → MSE 0.02
    prediction[1] = 0.1  # every pixel off by 0.1 → MSE 0.01
    values = psnr(prediction, target)
    assert values[0] == pytest.approx(-10 * math.log10(0.02), abs=1e-4)
    assert values[1] == pytest.approx(20.0, abs=1e-4)


def test_ssim_is_one_for_identical_images_and_the_luminance_term_for_constant_ones():
    image = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert ssim(image, image) == pytest.approx(torch.ones(3), abs=1e-6)
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01 ** 2  # no variance: SSIM is (2 μa μb + C1) / (μa² + μb² + C1)
    assert float(ssim(a, b)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), abs=1e-6)


def test_ssim_falls_as_noise_grows():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=generator)
    noise = torch.randn(1, 3, 32, 32, generator=generator)
    values = [float(ssim((image + s * noise).clamp(0, 1), image)) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_shapes_that_differ_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
