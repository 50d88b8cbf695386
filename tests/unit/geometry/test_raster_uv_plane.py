"""render_uv_to_plane / sample_texture: UVs of the visible surface on an orthographic plane."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from avatar4d.geometry.raster import OrthographicView, TorchRasterizer, render_uv_to_plane, sample_texture

RES = 32


def quad(half: float, z_of_x: tuple[float, float], uv_lo: float = 0.0, uv_hi: float = 1.0):
    """A square [-half, half]² in x/y with z = a + b x, and UVs spanning [uv_lo, uv_hi]² linearly.

    UVs are stored in a different order than the positions (their own index tensor)."""
    a, b = z_of_x
    xy = [(-half, -half), (half, -half), (half, half), (-half, half)]
    verts = torch.tensor([(x, y, a + b * x) for x, y in xy])
    uv = torch.tensor([(uv_lo + (x + half) / (2 * half) * (uv_hi - uv_lo),
                        uv_lo + (y + half) / (2 * half) * (uv_hi - uv_lo)) for x, y in xy])
    order = [2, 0, 3, 1]  # uv_coords[k] = uv of vertex order[k]
    uv_coords = uv[order]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv_faces = torch.tensor([[order.index(v) for v in f] for f in faces.tolist()])
    return verts, faces, uv_coords, uv_faces


def pixel_world_xy(view: OrthographicView) -> torch.Tensor:
    return view.pixel_centers((RES, RES))  # [H, W, 2] world (x, y) for the xy preset


def test_front_quad_gets_its_uvs_and_depth_at_pixel_centres() -> None:
    view = OrthographicView.preset("xy")
    verts, faces, uv_coords, uv_faces = quad(0.25, (0.1, 0.2))
    plane = render_uv_to_plane(TorchRasterizer(), verts[None], faces, uv_coords, uv_faces, view, RES)
    assert plane.uv.shape == (1, RES, RES, 2) and plane.mask.shape == (1, RES, RES, 1)
    xy = pixel_world_xy(view)
    inside = (xy.abs() < 0.25).all(dim=-1)
    assert int(inside.sum()) == 16 * 16
    assert torch.equal(plane.mask[0, ..., 0], inside)
    expected_uv = (xy + 0.25) / 0.5
    assert torch.allclose(plane.uv[0][inside], expected_uv[inside], atol=1e-5)
    assert bool((plane.uv[0][~inside] == 0).all())
    expected_depth = -(0.1 + 0.2 * xy[..., 0])  # view depth of the xy preset = -z
    assert torch.allclose(plane.depth[0, ..., 0][inside], expected_depth[inside], atol=1e-5)
    grid = plane.grid()
    assert torch.allclose(grid[0][inside], expected_uv[inside] * 2 - 1, atol=1e-5)
    flipped = plane.grid(flip_v=True)
    assert torch.allclose(flipped[0, ..., 1][inside], -grid[0, ..., 1][inside], atol=1e-6)


def test_visible_surface_wins_and_views_differ() -> None:
    front = quad(0.3, (0.2, 0.0), 0.0, 0.5)
    back = quad(0.3, (-0.2, 0.0), 0.5, 1.0)
    verts = torch.cat([front[0], back[0]])[None]
    faces = torch.cat([front[1], back[1] + 4])
    uv_coords = torch.cat([front[2], back[2]])
    uv_faces = torch.cat([front[3], back[3] + 4])
    rasterizer = TorchRasterizer()
    from_front = render_uv_to_plane(rasterizer, verts, faces, uv_coords, uv_faces, OrthographicView.preset("xy"), RES)
    covered = from_front.mask[0, ..., 0]
    assert bool((from_front.uv[0][covered] <= 0.5 + 1e-6).all())  # the z = +0.2 quad is in front
    # Looking from -z instead (rotate the view by 180° about y): the other quad is visible.
    from_back = OrthographicView(rotation=((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    behind = render_uv_to_plane(rasterizer, verts, faces, uv_coords, uv_faces, from_back, RES)
    assert bool((behind.uv[0][behind.mask[0, ..., 0]] >= 0.5 - 1e-6).all())


def test_sample_texture_reads_the_texture_at_the_uvs() -> None:
    view = OrthographicView.preset("xy")
    verts, faces, uv_coords, uv_faces = quad(0.25, (0.0, 0.0), 0.1, 0.9)
    verts = torch.stack([verts, verts + torch.tensor([0.1, 0.0, 0.0])])  # two frames
    plane = render_uv_to_plane(TorchRasterizer(), verts, faces, uv_coords, uv_faces, view, RES)
    ht, wt = 20, 12
    cols = ((torch.arange(wt) + 0.5) / wt)[None, :].expand(ht, wt)
    rows = ((torch.arange(ht) + 0.5) / ht)[:, None].expand(ht, wt)
    texture = torch.stack([cols, rows])[None].clone().requires_grad_(True)  # [1, 2, Ht, Wt]: texel → its uv
    sampled = sample_texture(texture, plane)  # [2, 2, H, W]
    assert sampled.shape == (2, 2, RES, RES)
    mask = plane.mask[..., 0]
    values = sampled.permute(0, 2, 3, 1)
    assert torch.allclose(values[mask], plane.uv[mask], atol=1e-5)  # bilinear is exact on linear maps
    assert bool((values[~mask] == 0).all())
    sampled.sum().backward()
    assert texture.grad is not None and float(texture.grad.abs().sum()) > 0


def test_invalid_inputs() -> None:
    verts, faces, uv_coords, uv_faces = quad(0.25, (0.0, 0.0))
    rasterizer, view = TorchRasterizer(), OrthographicView.preset("xy")
    with pytest.raises(ValueError, match="uv_faces"):
        render_uv_to_plane(rasterizer, verts[None], faces, uv_coords, uv_faces[:1], view, RES)
    with pytest.raises(ValueError, match="uv_coords"):
        render_uv_to_plane(rasterizer, verts[None], faces, uv_coords[:, :1], uv_faces, view, RES)
    plane = render_uv_to_plane(rasterizer, verts[None], faces, uv_coords, uv_faces, view, RES)
    with pytest.raises(ValueError, match="batch"):
        sample_texture(torch.zeros(3, 4, 8, 8), plane)


def _head_model_available() -> bool:
    try:
        return importlib.util.find_spec("avatar4d.geometry.morphable") is not None
    except ImportError:
        return False


@pytest.mark.skipif(not _head_model_available(), reason="avatar4d.geometry.morphable is not in this checkout")
def test_head_model_uvs_on_the_frontal_plane() -> None:
    morphable = pytest.importorskip("avatar4d.geometry.morphable")
    if not hasattr(morphable, "default_head_model"):
        pytest.skip("avatar4d.geometry.morphable has no default_head_model")
    model = morphable.default_head_model()
    verts = model.vertices(model.neutral_params(1))  # [1, V, 3]
    plane = render_uv_to_plane(TorchRasterizer(), verts, model.faces, model.uv_coords, model.uv_faces,
                               OrthographicView.preset("xy"), 64)
    covered = plane.mask[0, ..., 0]
    assert 0.05 < covered.float().mean() < 0.95  # the head covers part of the frontal plane
    assert bool(((plane.uv[0][covered] >= -1e-5) & (plane.uv[0][covered] <= 1 + 1e-5)).all())
