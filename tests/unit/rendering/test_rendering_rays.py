"""Camera rays: direction, normalisation, pixel order."""

import math

import pytest
import torch

from avatar4d.geometry.camera import DEFAULT_PIVOT, orbit_camera
from avatar4d.rendering.rays import camera_rays


def test_central_ray_points_at_the_pivot():
    camera = orbit_camera(torch.tensor([0.0, 0.4]), torch.tensor([0.0, -0.2]))
    pivot = torch.tensor(DEFAULT_PIVOT)
    res = 17  # odd: the centre pixel's centre is the principal point
    origins, directions = camera_rays(camera, res, pixel_centers=True)
    assert origins.shape == (2, res * res, 3) and directions.shape == (2, res * res, 3)
    centre = (res // 2) * res + res // 2
    to_pivot = torch.nn.functional.normalize(pivot - camera.origin, dim=-1)
    torch.testing.assert_close(directions[:, centre], to_pivot, atol=1e-6, rtol=0)
    torch.testing.assert_close(origins, camera.origin[:, None].expand_as(origins))
    # Next3D++ integer pixel coordinates: pixel (res/2, res/2) of an even image is the principal point
    _, dirs_int = camera_rays(camera, 16, pixel_centers=False)
    torch.testing.assert_close(dirs_int[:, 8 * 16 + 8], to_pivot, atol=1e-6, rtol=0)


def test_directions_are_unit_and_row_major_from_the_top_left():
    camera = orbit_camera(0.0, 0.0)  # at +z looking at the face (-z); image right = world +x
    res = 8
    _, directions = camera_rays(camera, res)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, res * res))
    top_left, top_right = directions[0, 0], directions[0, res - 1]
    bottom_left = directions[0, (res - 1) * res]
    assert top_left[0] < 0 and top_left[1] > 0 and top_left[2] < 0  # up-left, forward
    assert top_right[0] > 0 and top_right[1] > 0
    assert bottom_left[0] < 0 and bottom_left[1] < 0
    # corner angle: half-pixel inside the image edge, fx = 1 / (tan(fov/2) * 1.414)
    focal = camera.intrinsics[0, 0, 0].item()
    offset = (0.5 - 0.5 / res) / focal
    expected = torch.nn.functional.normalize(torch.tensor([-offset, offset, -1.0]), dim=0)
    torch.testing.assert_close(top_left, expected, atol=1e-6, rtol=0)


def test_pixel_centres_versus_integer_coordinates_differ_by_half_a_pixel():
    camera = orbit_camera(0.0, 0.0)
    _, centres = camera_rays(camera, 4, pixel_centers=True)
    _, corners = camera_rays(camera, 4, pixel_centers=False)
    focal = camera.intrinsics[0, 0, 0].item()
    # x tangent of pixel (0, 0): centres (0.125 - 0.5) / f, integer (0 - 0.5) / f; world x = camera x
    assert centres[0, 0, 0] / -centres[0, 0, 2] == pytest.approx((0.125 - 0.5) / focal, rel=1e-5)
    assert corners[0, 0, 0] / -corners[0, 0, 2] == pytest.approx(-0.5 / focal, rel=1e-5)
    assert math.isclose(float(corners[0, 0, 1] / -corners[0, 0, 2]), 0.5 / focal, rel_tol=1e-5)


def test_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        camera_rays(orbit_camera(0.0, 0.0), 0)
