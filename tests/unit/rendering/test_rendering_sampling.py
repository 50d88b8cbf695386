"""Ray ranges, stratified and importance sampling, merging."""

import pytest
import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.rendering.sampling import (
    importance_depths,
    merge_samples,
    resolve_ray_range,
    sample_pdf,
    stratified_depths,
)


def test_fixed_and_auto_ray_ranges():
    camera = orbit_camera(torch.tensor([0.0, 0.5, -0.3]), torch.tensor([0.0, 0.2, -0.1]),
                          radius=torch.tensor([2.7, 3.0, 2.5]))
    start, end = resolve_ray_range(camera.origin, 2.25, 3.3)
    assert start.shape == end.shape == (3, 1)
    assert torch.all(start == 2.25) and torch.all(end == 3.3)
    start, end = resolve_ray_range(camera.origin, None, None)
    distance = camera.origin.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(start, distance - 0.45)
    torch.testing.assert_close(end, distance + 0.6)
    # a camera 2.7 from the origin gets EG3D's 2.25-3.3
    start, end = resolve_ray_range(torch.tensor([[0.0, 0.0, 2.7]]), None, None)
    assert start.item() == pytest.approx(2.25) and end.item() == pytest.approx(3.3)


def test_ray_range_errors():
    origins = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="both"):
        resolve_ray_range(origins, 2.0, None)
    with pytest.raises(ValueError, match="ray_start < ray_end"):
        resolve_ray_range(origins, 3.0, 2.0)


def test_stratified_depths():
    start, end = torch.tensor([[2.0], [1.0]]), torch.tensor([[3.0], [5.0]])
    plain = stratified_depths(start, end, num_rays=3, num_samples=5)
    assert plain.shape == (2, 3, 5)
    torch.testing.assert_close(plain[0, 1], torch.linspace(2.0, 3.0, 5))
    torch.testing.assert_close(plain[1, 2], torch.linspace(1.0, 5.0, 5))
    noise = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(0))
    jittered = stratified_depths(start, end, 3, 5, noise=noise)
    spacing = ((end - start) / 4)[:, :, None]
    torch.testing.assert_close(jittered, plain + noise * spacing)
    disparity = stratified_depths(start, end, 1, 5, disparity_space=True)
    inverse = 1.0 / disparity[0, 0]
    torch.testing.assert_close(inverse, torch.linspace(1 / 2.0, 1 / 3.0, 5))
    with pytest.raises(ValueError):
        stratified_depths(start, end, 1, 1)
    with pytest.raises(ValueError, match="ray_start > 0"):
        stratified_depths(torch.zeros(1, 1), torch.ones(1, 1), 1, 4, disparity_space=True)


def test_sample_pdf_follows_the_weights():
    bins = torch.linspace(0.0, 4.0, 5).expand(2, 5)
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    det = sample_pdf(bins, weights, 9)
    # all the mass in [2, 3]
    assert torch.all(det[0, 1:-1] >= 2.0) and torch.all(det[0, 1:-1] <= 3.0)
    # uniform weights: inverse CDF is the identity map onto [0, 4]
    torch.testing.assert_close(det[1], torch.linspace(0.0, 4.0, 9), atol=1e-4, rtol=0)
    u = torch.tensor([[0.3], [0.6]])
    torch.testing.assert_close(sample_pdf(bins, weights, 1, u)[1], torch.tensor([2.4]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="bins"):
        sample_pdf(bins[:, :4], weights, 3)


def test_importance_depths_concentrate_where_the_weights_are():
    depths = torch.linspace(2.0, 3.0, 21).expand(1, 2, 21).clone()
    weights = torch.zeros(1, 2, 20)
    weights[0, 0, 10] = 1.0  # midpoint 2.525
    weights[0, 1, 15] = 1.0  # midpoint 2.775
    fine = importance_depths(depths, weights, 16)
    assert fine.shape == (1, 2, 16) and not fine.requires_grad
    assert torch.all(fine >= 2.0) and torch.all(fine <= 3.0)
    near_peak_0 = ((fine[0, 0] - 2.525).abs() < 0.08).float().mean()
    near_peak_1 = ((fine[0, 1] - 2.775).abs() < 0.08).float().mean()
    assert near_peak_0 > 0.6 and near_peak_1 > 0.6
    random = importance_depths(depths, weights, 16, torch.rand(1, 2, 16, generator=torch.Generator().manual_seed(1)))
    assert ((random[0, 0] - 2.525).abs() < 0.08).float().mean() > 0.5
    with pytest.raises(ValueError, match="at least 4"):
        importance_depths(depths[:, :, :3], weights[:, :, :2], 4)


def test_merge_samples_sorts_by_depth_and_carries_values():
    depths_a = torch.tensor([[[1.0, 3.0, 5.0]]])
    depths_b = torch.tensor([[[2.0, 4.0]]])
    colors_a, colors_b = depths_a[..., None] * 10, depths_b[..., None] * 10
    depths, colors, densities = merge_samples(depths_a, colors_a, -depths_a, depths_b, colors_b, -depths_b)
    torch.testing.assert_close(depths[0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    torch.testing.assert_close(colors[0, 0, :, 0], depths[0, 0] * 10)
    torch.testing.assert_close(densities, -depths)
