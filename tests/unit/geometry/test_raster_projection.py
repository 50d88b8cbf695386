"""Clip-space helpers: perspective from a Camera (consistent with Camera.project), orthographic views."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.geometry.raster import (
    OrthographicView,
    TorchRasterizer,
    clip_from_world,
    orthographic_clip,
    perspective_clip,
    triplane_views,
    view_for_axes,
)

NEAR, FAR = 0.1, 10.0


def camera_depth_from_ndc(z_ndc: torch.Tensor) -> torch.Tensor:
    return 2 * FAR * NEAR / ((FAR + NEAR) - z_ndc * (FAR - NEAR))


def test_vertex_lands_in_the_pixel_camera_project_names() -> None:
    camera = orbit_camera(torch.tensor([0.3, -0.5]), torch.tensor([-0.15, 0.2]), torch.tensor([0.1, 0.0]))
    height, width = 48, 64  # non-square, so swapped axes would show
    gen = torch.Generator().manual_seed(1)
    rasterizer = TorchRasterizer()
    for point in (torch.rand(4, 3, generator=gen) * 0.4 - 0.2 + torch.tensor([0.0, 0.0, 0.2])):
        for b in range(camera.batch_size):
            cam = camera[b]
            uv, depth = cam.project(point[None, None])  # [1, 1, 2], [1, 1]
            right, down = cam.cam2world[0, :3, 0], cam.cam2world[0, :3, 1]
            fx, fy = cam.intrinsics[0, 0, 0], cam.intrinsics[0, 1, 1]
            radius_px = 1.5  # a hexagonal fan 1.5 px around the point covers the pixel containing it
            rx, ry = radius_px * depth[0, 0] / (fx * width), radius_px * depth[0, 0] / (fy * height)
            angles = torch.arange(6) * math.pi / 3
            ring = point + torch.cos(angles)[:, None] * rx * right + torch.sin(angles)[:, None] * ry * down
            verts = torch.cat([point[None], ring])[None]  # [1, 7, 3]
            faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 6] for k in range(6)])
            out = rasterizer.rasterize(perspective_clip(verts, cam, NEAR, FAR), faces, (height, width))
            row, col = int(uv[0, 0, 1] * height), int(uv[0, 0, 0] * width)
            assert bool(out.mask[0, row, col, 0])
            rows, cols = out.mask[0, ..., 0].nonzero(as_tuple=True)
            centroid = torch.stack([rows.float().mean() + 0.5, cols.float().mean() + 0.5])
            expected = torch.stack([uv[0, 0, 1] * height, uv[0, 0, 0] * width])
            assert torch.allclose(centroid, expected, atol=0.6)


def test_tilted_plane_interpolation_is_perspective_correct() -> None:
    camera = orbit_camera(0.35, 0.15, 0.0)
    origin = torch.tensor([0.0, 0.0, 0.2])
    normal = torch.nn.functional.normalize(torch.tensor([0.6, 0.3, 1.0]), dim=0)
    tangent = torch.nn.functional.normalize(torch.linalg.cross(normal, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    bitangent = torch.linalg.cross(normal, tangent)
    corners = [origin + 0.5 * (a * tangent + b * bitangent) for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    verts = torch.stack(corners)[None]  # [1, 4, 3]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    height, width = 64, 64
    rasterizer = TorchRasterizer()
    out = rasterizer.rasterize(perspective_clip(verts, camera, NEAR, FAR), faces, (height, width))
    world = rasterizer.interpolate(verts, out, faces)  # [1, H, W, 3]
    covered = out.mask[0, ..., 0]
    assert int(covered.sum()) > 1000
    points = world[0][covered]  # [N, 3]
    assert torch.allclose((points - origin) @ normal, torch.zeros(len(points)), atol=1e-5)
    uv, depth = camera.project(points[None])
    rows, cols = covered.nonzero(as_tuple=True)
    centres = torch.stack([(cols + 0.5) / width, (rows + 0.5) / height], dim=-1)
    assert torch.allclose(uv[0], centres, atol=2e-5)
    assert torch.allclose(camera_depth_from_ndc(out.rast[0, ..., 2][covered]), depth[0], rtol=1e-4)
    # Screen-space (affine) weights would differ by far more than the tolerance above, so the
    # test tells perspective-correct interpolation apart (affine weights ∝ perspective ones × w).
    w = perspective_clip(verts, camera, NEAR, FAR)[0, :, 3]  # [4]
    bary = out.barycentrics[0][covered]  # [N, 3]
    screen = bary * w[faces[out.triangle_id[0][covered]]]
    screen = screen / screen.sum(-1, keepdim=True)
    assert (screen - bary).abs().max() > 1e-3


def test_perspective_clip_matches_matrix_and_broadcasts() -> None:
    camera = orbit_camera(torch.tensor([0.0, 0.4, -0.3]), torch.tensor([0.1, 0.0, 0.2]))
    verts = torch.randn(1, 10, 3) * 0.2
    clip = perspective_clip(verts, camera, NEAR, FAR)  # vertex batch 1 broadcasts to 3 cameras
    assert clip.shape == (3, 10, 4)
    homo = torch.cat([verts, torch.ones(1, 10, 1)], dim=-1)
    assert torch.allclose(clip, homo @ clip_from_world(camera, NEAR, FAR).transpose(1, 2), atol=1e-6)
    uv, depth = camera.project(verts.expand(3, -1, -1))
    assert torch.allclose(clip[..., 3], depth, atol=1e-5)
    assert torch.allclose((clip[..., :2] / clip[..., 3:] + 1) / 2, uv, atol=1e-5)
    with pytest.raises(ValueError, match="near"):
        perspective_clip(verts, camera, near=1.0, far=0.5)
    with pytest.raises(ValueError, match="batch"):
        perspective_clip(torch.randn(2, 10, 3), camera)


# EG3D's generate_planes(): the matrices its project_onto_planes() inverts (XY, XZ, ZX).
EG3D_PLANES = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                            [[0, 0, 1], [1, 0, 0], [0, 1, 0]]])


def test_triplane_views_match_eg3d_plane_sampling() -> None:
    points = torch.rand(1, 50, 3) - 0.5
    box_warp = 1.0
    for plane, view in enumerate(triplane_views("eg3d")):
        clip = orthographic_clip(points, view)
        eg3d_grid = ((2 / box_warp) * points[0] @ torch.linalg.inv(EG3D_PLANES[plane]))[:, :2]
        assert torch.allclose(clip[0, :, :2], eg3d_grid, atol=1e-6)
        assert torch.equal(clip[..., 3], torch.ones(1, 50))
    assert triplane_views("next3d")[2] == OrthographicView.preset("zy")
    assert triplane_views("corrected")[2] == OrthographicView.preset("yz")
    with pytest.raises(ValueError, match="eg3d"):
        triplane_views("nope")


def test_triplane_views_match_the_renderer_plane_conventions() -> None:
    planes = pytest.importorskip("avatar4d.rendering.planes")
    points = torch.rand(1, 40, 3) - 0.5
    for convention in planes.PLANE_CONVENTIONS:
        pairs = planes.plane_axis_pairs(convention)
        for (a, b), view in zip(pairs, triplane_views(convention), strict=True):
            clip = orthographic_clip(points, view)
            assert torch.allclose(clip[0, :, 0], 2 * points[0, :, a], atol=1e-6)
            assert torch.allclose(clip[0, :, 1], 2 * points[0, :, b], atol=1e-6)
            assert view == view_for_axes(a, b)
    with pytest.raises(ValueError, match="axes"):
        view_for_axes(1, 1)


def test_front_view_depth_order_and_pixel_positions() -> None:
    view = OrthographicView.preset("xy")
    z_ndc = orthographic_clip(torch.tensor([[[0.0, 0.0, 0.4], [0.0, 0.0, -0.4]]]), view)[0, :, 2]
    assert z_ndc[0] < z_ndc[1]  # larger world z is nearer for a viewer at +z
    assert torch.allclose(view.depth_from_ndc(z_ndc), torch.tensor([-0.4, 0.4]))
    # A quad filling the box: the rendered world position at pixel (i, j) is EG3D's sample point.
    verts = torch.tensor([[[-0.5, -0.5, 0.1], [0.5, -0.5, 0.1], [0.5, 0.5, 0.1], [-0.5, 0.5, 0.1]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rasterizer = TorchRasterizer()
    out = rasterizer.rasterize(orthographic_clip(verts, view), faces, (16, 24))
    world = rasterizer.interpolate(verts, out, faces)[0]  # [H, W, 3]
    assert bool(out.mask.all())
    assert torch.allclose(world[..., :2], view.pixel_centers((16, 24)), atol=1e-6)
    assert torch.allclose(world[0, 0, :2], torch.tensor([(0.5 / 24 - 0.5), (0.5 / 16 - 0.5)]), atol=1e-6)


def test_orthographic_view_config() -> None:
    view = OrthographicView.preset("xz", extent=(-0.6, 0.6))
    assert view.extent == (-0.6, 0.6)
    assert OrthographicView.from_dict(view.to_dict()) == view
    points = torch.randn(5, 3)
    assert torch.allclose(view.view_to_world(view.world_to_view(points)), points, atol=1e-6)
    with pytest.raises(ValueError, match="orthonormal"):
        OrthographicView(rotation=((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    with pytest.raises(ValueError, match="extent"):
        OrthographicView(extent=(0.5, -0.5))
    with pytest.raises(ValueError, match="preset"):
        OrthographicView.preset("front")
