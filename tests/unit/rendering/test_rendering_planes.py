"""Triplane axis conventions and bilinear feature sampling."""

import pytest
import torch

from avatar4d.rendering.planes import (
    PLANE_CONVENTIONS,
    axis_pairs_from_plane_axes,
    plane_axis_pairs,
    sample_planes,
)

RES = 16

# EG3D's generate_planes() matrices (NVlabs/eg3d volumetric_rendering/renderer.py).
EG3D_PLANE_AXES = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)
# Next3D's training_avatar_texture renderer swaps x and z in the third matrix.
NEXT3D_PLANE_AXES = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                  [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                  [[0, 0, 1], [0, 1, 0], [1, 0, 0]]], dtype=torch.float32)


def ramp_planes(batch: int = 1) -> torch.Tensor:
    """[B, 3, 2, R, R]: channel 0 = grid x of each texel centre, channel 1 = grid y (align_corners=False)."""
    centres = (torch.arange(RES, dtype=torch.float32) * 2 + 1) / RES - 1
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    one = torch.stack([grid_x, grid_y])  # [2, R, R]
    return one.expand(batch, 3, 2, RES, RES).clone()


@pytest.mark.parametrize("convention,expected", [
    ("eg3d", ((0, 1), (0, 2), (2, 0))),
    ("next3dpp", ((0, 1), (0, 2), (2, 0))),
    ("next3d", ((0, 1), (0, 2), (2, 1))),
    ("corrected", ((0, 1), (0, 2), (1, 2))),
])
def test_ramp_planes_return_the_paired_coordinates(convention, expected):
    assert plane_axis_pairs(convention) == expected
    gen = torch.Generator().manual_seed(0)
    # inside the region between the outermost texel centres bilinear interpolation of a ramp is exact
    limit = 0.5 * (1 - 1 / RES)
    points = (torch.rand(2, 50, 3, generator=gen) * 2 - 1) * limit
    out = sample_planes(ramp_planes(2), points, convention, box_warp=1.0)  # [B, 3, N, 2]
    assert out.shape == (2, 3, 50, 2)
    for plane, (first, second) in enumerate(expected):
        torch.testing.assert_close(out[:, plane, :, 0], 2 * points[..., first], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, plane, :, 1], 2 * points[..., second], atol=1e-5, rtol=0)


def test_box_warp_scales_the_lookup():
    points = torch.tensor([[[0.3, -0.2, 0.1]]])
    out = sample_planes(ramp_planes(), points, "corrected", box_warp=2.0)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.3, -0.2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([-0.2, 0.1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("convention", sorted(PLANE_CONVENTIONS))
def test_points_outside_the_box_read_zeros(convention):
    planes = torch.ones(1, 3, 4, RES, RES)
    points = torch.tensor([[[0.7, 0.0, 0.0], [0.0, -0.8, 0.6], [0.9, 0.9, -0.9]]])
    out = sample_planes(planes, points, convention)
    axes = plane_axis_pairs(convention)
    for n in range(points.shape[1]):
        for plane, pair in enumerate(axes):
            outside = any(abs(2 * points[0, n, a].item()) > 1 + 1 / RES for a in pair)
            if outside:
                assert torch.all(out[0, plane, n] == 0)
            else:
                torch.testing.assert_close(out[0, plane, n], torch.ones(4))
    # a point outside along every axis is zero on every plane
    assert torch.all(out[0, :, 2] == 0)


def test_eg3d_plane_axes_project_like_the_eg3d_convention():
    # EG3D projects with p @ inv(M); InvertAvatar stores inv(M) and projects with p @ stored.
    assert axis_pairs_from_plane_axes(EG3D_PLANE_AXES, pre_inverted=False) == plane_axis_pairs("eg3d")
    inverted = torch.linalg.inv(EG3D_PLANE_AXES)
    assert axis_pairs_from_plane_axes(inverted, pre_inverted=True) == plane_axis_pairs("next3dpp")
    assert axis_pairs_from_plane_axes(NEXT3D_PLANE_AXES, pre_inverted=False) == plane_axis_pairs("next3d")
    # the literal projection of the point (1, 2, 3) through EG3D's third matrix is (z, x) = (3, 1)
    projected = torch.tensor([[1.0, 2.0, 3.0]]) @ torch.linalg.inv(EG3D_PLANE_AXES[2])
    torch.testing.assert_close(projected[0, :2], torch.tensor([3.0, 1.0]))


def test_errors():
    with pytest.raises(ValueError, match="unknown plane convention"):
        plane_axis_pairs("xyz")
    with pytest.raises(ValueError, match="unknown plane convention"):
        sample_planes(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 5, 3), "zyx")
    with pytest.raises(ValueError, match="planes must be"):
        sample_planes(torch.zeros(1, 2, 2, 4, 4), torch.zeros(1, 5, 3), "eg3d")
    with pytest.raises(ValueError, match="points must be"):
        sample_planes(torch.zeros(2, 3, 2, 4, 4), torch.zeros(1, 5, 3), "eg3d")
    with pytest.raises(ValueError, match="box_warp"):
        sample_planes(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 5, 3), "eg3d", box_warp=0.0)
    with pytest.raises(ValueError, match="signed permutation"):
        axis_pairs_from_plane_axes(torch.eye(3).expand(3, 3, 3) * 0.5, pre_inverted=True)
