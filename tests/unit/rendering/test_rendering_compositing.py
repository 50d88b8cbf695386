"""MipRayMarcher2 compositing against closed-form values."""

import math

import pytest
import torch

from avatar4d.rendering.compositing import activate_density, march_rays


def test_constant_density_matches_beer_lambert():
    depths = torch.linspace(2.0, 3.0, 11).expand(2, 3, 11)
    sigma = torch.full((2, 3, 11), 2.0)
    colors = torch.full((2, 3, 11, 4), 0.75)
    out = march_rays(colors, sigma, depths)
    density = math.log1p(math.exp(2.0 - 1.0))  # softplus(sigma - 1)
    expected_opacity = 1 - math.exp(-density * 1.0)
    torch.testing.assert_close(out.opacity, torch.full((2, 3), expected_opacity), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features, torch.full((2, 3, 4), 0.75 * 2 * expected_opacity - 1), atol=1e-5, rtol=0)
    assert out.weights.shape == (2, 3, 10)
    # depth: weighted mean of midpoints with weights alpha * T (geometric), inside the range
    alpha = 1 - math.exp(-density * 0.1)
    mids = torch.linspace(2.05, 2.95, 10)
    w = torch.tensor([alpha * (1 - alpha) ** k for k in range(10)])
    torch.testing.assert_close(out.depth[0, 0], (w * mids).sum() / w.sum(), atol=1e-4, rtol=0)


def test_opaque_wall_and_background():
    depths = torch.linspace(2.0, 3.0, 21).expand(1, 2, 21)
    sigma = torch.full((1, 2, 21), -60.0)
    sigma[0, 0, 10:] = 200.0  # a wall starting at depth 2.5 on ray 0; ray 1 empty
    colors = torch.zeros(1, 2, 21, 3)
    colors[..., 0] = 1.0
    out = march_rays(colors, sigma, depths)
    assert out.opacity[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    # the first midpoint touching the wall, (2.45 + 2.5) / 2, takes almost all the weight
    assert out.depth[0, 0].item() == pytest.approx(2.475, abs=0.02)
    assert out.opacity[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert out.depth[0, 1].item() == pytest.approx(3.0)  # no weight: clamped to the far end
    torch.testing.assert_close(out.features[0, 1], torch.full((3,), -1.0))
    white = march_rays(colors, sigma, depths, white_back=True)
    torch.testing.assert_close(white.features[0, 1], torch.ones(3))
    torch.testing.assert_close(white.features[0, 0], torch.tensor([1.0, -1.0, -1.0]), atol=1e-4, rtol=0)


def test_no_nan_gradient_for_transparent_rays():
    depths = torch.linspace(2.0, 3.0, 8).expand(1, 1, 8)
    sigma = torch.full((1, 1, 8), -200.0, requires_grad=True)
    out = march_rays(torch.rand(1, 1, 8, 3), sigma, depths)
    (out.depth.sum() + out.features.sum()).backward()
    assert torch.isfinite(sigma.grad).all()


def test_density_activation_modes():
    sigma = torch.tensor([-3.0, 0.5, 4.0])
    torch.testing.assert_close(activate_density(sigma), torch.nn.functional.softplus(sigma - 1))
    torch.testing.assert_close(activate_density(sigma, "relu", 0.0), torch.tensor([0.0, 0.5, 4.0]))
    with pytest.raises(ValueError, match="clamp_mode"):
        activate_density(sigma, "exp")
