"""TorchRasterizer on analytic meshes: coverage, depth, barycentrics, gradients, backend choice."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.geometry.raster import (
    RasterBackendUnavailable,
    RasterizerConfig,
    TorchRasterizer,
    get_rasterizer,
)


def clip_from_ndc(xy: list[tuple[float, float]], z: float | list[float] = 0.0) -> torch.Tensor:
    """[1, V, 4] clip positions with w = 1 from NDC (x, y) and z."""
    zs = [z] * len(xy) if isinstance(z, float) else z
    return torch.tensor([[(x, y, zz, 1.0) for (x, y), zz in zip(xy, zs, strict=True)]], dtype=torch.float32)


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC (x, y) of every pixel centre, each [H, W] float64 (row 0 = NDC y = -1)."""
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    y = (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2 - 1
    return x[None, :].expand(height, width), y[:, None].expand(height, width)


def edge_distances(tri: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Signed distance in pixels of every pixel centre to each edge of a 2D NDC triangle [3, 2],
    positive inside → [3, H, W] (float64 brute force)."""
    px, py = pixel_centres(height, width)
    tri = tri.double()
    area = (tri[1, 0] - tri[0, 0]) * (tri[2, 1] - tri[0, 1]) - (tri[1, 1] - tri[0, 1]) * (tri[2, 0] - tri[0, 0])
    out = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        ex, ey = (tri[b, 0] - tri[a, 0]) * width / 2, (tri[b, 1] - tri[a, 1]) * height / 2
        cross = ex * (py - tri[a, 1]) * height / 2 - ey * (px - tri[a, 0]) * width / 2
        out.append(torch.sign(area) * cross / math.hypot(ex, ey))
    return torch.stack(out)


@pytest.fixture
def rasterizer() -> TorchRasterizer:
    return TorchRasterizer()


def test_full_screen_quad_covers_every_pixel(rasterizer: TorchRasterizer) -> None:
    clip = clip_from_ndc([(-1, -1), (1, -1), (1, 1), (-1, 1)], 0.25)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    for resolution in ((16, 16), (24, 40), (33, 7)):
        out = rasterizer.rasterize(clip, faces, resolution)
        assert out.rast.shape == (1, *resolution, 4) and out.rast.dtype == torch.float32
        assert bool(out.mask.all())
        assert set(out.triangle_id.unique().tolist()) == {0, 1}
        assert torch.allclose(out.rast[..., 2], torch.full(resolution, 0.25)[None])


def test_large_triangle_covers_its_analytic_area(rasterizer: TorchRasterizer) -> None:
    xy = [(-0.9, -0.8), (0.85, -0.55), (0.1, 0.93)]
    out = rasterizer.rasterize(clip_from_ndc(xy), torch.tensor([[0, 1, 2]]), (256, 256))
    (x0, y0), (x1, y1), (x2, y2) = xy
    area_px = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) / 2 * (256 / 2) ** 2
    covered = int(out.mask.sum())
    assert abs(covered - area_px) / area_px < 0.01
    assert out.triangle_id.max() == 0 and out.triangle_id.min() == -1


def test_coverage_matches_brute_force_pixel_centre_test(rasterizer: TorchRasterizer) -> None:
    gen = torch.Generator().manual_seed(3)
    height, width = 48, 64
    for _ in range(12):
        tri = torch.rand(3, 2, generator=gen) * 2.6 - 1.3  # partly off screen at times
        out = rasterizer.rasterize(clip_from_ndc([tuple(p) for p in tri.tolist()]), torch.tensor([[0, 1, 2]]),
                                   (height, width))
        dist = edge_distances(tri, height, width).amin(dim=0)  # [H, W]
        clear = dist.abs() > 1e-2  # pixel centres not within 0.01 px of an edge
        assert torch.equal(out.mask[0, ..., 0][clear], (dist > 0)[clear])


def test_triangles_outside_the_view_cover_nothing(rasterizer: TorchRasterizer) -> None:
    faces = torch.tensor([[0, 1, 2]])
    beside = clip_from_ndc([(1.1, -0.5), (2.0, 0.0), (1.5, 0.8)])
    beyond_far = clip_from_ndc([(-0.5, -0.5), (0.5, -0.5), (0.0, 0.5)], 1.5)
    behind_eye = torch.tensor([[[-0.5, -0.5, 0.0, -1.0], [0.5, -0.5, 0.0, -1.0], [0.0, 0.5, 0.0, -1.0]]])
    degenerate = clip_from_ndc([(-0.5, -0.5), (0.0, 0.0), (0.5, 0.5)])
    for clip in (beside, beyond_far, behind_eye, degenerate):
        out = rasterizer.rasterize(clip, faces, (32, 32))
        assert not bool(out.mask.any())
        assert bool((out.triangle_id == -1).all()) and bool((out.rast == 0).all())


def test_depth_range_clips_per_pixel(rasterizer: TorchRasterizer) -> None:
    # A quad whose z/w runs linearly from -1.5 (left) to 0.5 (right): pixels with z/w < -1 are cut.
    clip = clip_from_ndc([(-1, -1), (1, -1), (1, 1), (-1, 1)], [-1.5, 0.5, 0.5, -1.5])
    out = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2], [0, 2, 3]]), (8, 32))
    x, _ = pixel_centres(8, 32)
    expected = (-0.5 + x) >= -1.0
    assert torch.equal(out.mask[0, ..., 0], expected)
    assert torch.allclose(out.rast[0, ..., 2][expected].double(), (-0.5 + x)[expected], atol=1e-6)


def test_triangle_reaching_behind_the_eye_keeps_its_visible_part(rasterizer: TorchRasterizer) -> None:
    # One corner has w < 0: only the part with w > 0 and -1 <= z/w <= 1 may be drawn, and every
    # drawn pixel's interpolated clip position must project back onto that pixel's centre.
    clip = torch.tensor([[[-0.5, -0.5, 0.5, 1.0], [0.5, -0.5, 0.5, 1.0], [0.3, 0.2, -2.0, -1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    out = rasterizer.rasterize(clip, faces, (32, 32))
    covered = out.mask[0, ..., 0]
    assert int(covered.sum()) > 20
    point = rasterizer.interpolate(clip[0], out, faces)[0][covered]  # [N, 4] clip coordinates
    px, py = pixel_centres(32, 32)
    assert bool((point[:, 3] > 0).all())
    assert torch.allclose(point[:, 0] / point[:, 3], px[covered].float(), atol=1e-4)
    assert torch.allclose(point[:, 1] / point[:, 3], py[covered].float(), atol=1e-4)
    assert bool(((point[:, 2] / point[:, 3]).abs() <= 1 + 1e-5).all())
    assert torch.allclose(out.rast[0, ..., 2][covered], point[:, 2] / point[:, 3], atol=1e-4)
    # Dense samples of the visible part land only in rows whose pixels the rasterizer covers.
    a = torch.linspace(0, 1, 400)
    wa, wb = torch.meshgrid(a, a, indexing="ij")
    keep = wa + wb <= 1
    samples = wa[keep, None] * clip[0, 0] + wb[keep, None] * clip[0, 1] + (1 - wa - wb)[keep, None] * clip[0, 2]
    visible = (samples[:, 3] > 0) & ((samples[:, 2] / samples[:, 3]).abs() <= 1)
    rows = ((samples[visible, 1] / samples[visible, 3] + 1) / 2 * 32).floor().long()
    assert set(covered.nonzero()[:, 0].tolist()) <= set(rows.tolist())


def test_plane_at_known_depth(rasterizer: TorchRasterizer) -> None:
    clip = clip_from_ndc([(-0.7, -0.6), (0.8, -0.7), (0.6, 0.75), (-0.65, 0.7)], -0.375)
    out = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2], [0, 2, 3]]), (64, 64))
    assert int(out.mask.sum()) > 1500
    assert torch.allclose(out.depth_ndc[out.mask], torch.tensor(-0.375))


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_in_the_overlap(rasterizer: TorchRasterizer, near_first: bool) -> None:
    far = [(-0.9, -0.9, 0.6), (0.5, -0.9, 0.6), (-0.9, 0.5, 0.6)]
    near = [(-0.5, -0.5, -0.2), (0.9, -0.5, -0.2), (-0.5, 0.9, -0.2)]
    verts = near + far if near_first else far + near
    clip = torch.tensor([[(x, y, z, 1.0) for x, y, z in verts]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    near_id = 0 if near_first else 1
    out = rasterizer.rasterize(clip, faces, (64, 64))
    d_near = edge_distances(torch.tensor(near)[:, :2], 64, 64).amin(0)
    d_far = edge_distances(torch.tensor(far)[:, :2], 64, 64).amin(0)
    overlap = (d_near > 0.01) & (d_far > 0.01)
    only_far = (d_far > 0.01) & (d_near < -0.01)
    assert int(overlap.sum()) > 150 and int(only_far.sum()) > 150
    assert bool((out.triangle_id[0][overlap] == near_id).all())
    assert torch.allclose(out.rast[0, ..., 2][overlap], torch.tensor(-0.2))
    assert bool((out.triangle_id[0][only_far] == 1 - near_id).all())


def test_barycentrics_reproduce_vertex_attributes_and_linear_functions(rasterizer: TorchRasterizer) -> None:
    height, width = 32, 32
    # Vertices exactly on pixel centres (NDC of pixel (i, j) = ((j + .5) / 16 - 1, (i + .5) / 16 - 1)).
    def centre(i: int, j: int) -> tuple[float, float]:
        return ((j + 0.5) / width * 2 - 1, (i + 0.5) / height * 2 - 1)

    corners = [(2, 3), (5, 28), (29, 12)]
    clip = clip_from_ndc([centre(i, j) for i, j in corners])
    faces = torch.tensor([[0, 1, 2]])
    attr = torch.tensor([[1.0, -2.0], [3.0, 5.0], [-4.0, 0.5]])
    out = rasterizer.rasterize(clip, faces, (height, width))
    values = rasterizer.interpolate(attr, out, faces)  # [1, H, W, 2]
    assert values.shape == (1, height, width, 2)
    for k, (i, j) in enumerate(corners):
        assert bool(out.mask[0, i, j, 0])
        assert torch.allclose(values[0, i, j], attr[k], atol=1e-5)
    # A linear function of NDC position is reproduced exactly at every covered pixel centre.
    xy = clip[0, :, :2].double()
    linear = 0.7 * xy[:, :1] - 1.3 * xy[:, 1:] + 0.25  # [3, 1]
    interp = rasterizer.interpolate(linear.float(), out, faces)[0, ..., 0]
    px, py = pixel_centres(height, width)
    expected = 0.7 * px - 1.3 * py + 0.25
    covered = out.mask[0, ..., 0]
    assert torch.allclose(interp[covered].double(), expected[covered], atol=1e-5)
    assert bool((interp[~covered] == 0).all())
    bary = out.barycentrics
    assert torch.allclose(bary[out.mask[..., 0]].sum(-1), torch.tensor(1.0))


def test_interpolate_with_separate_attribute_faces_and_batches(rasterizer: TorchRasterizer) -> None:
    # Two frames: the same quad shifted; attributes indexed by their own faces (UV-style seams).
    base = clip_from_ndc([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
    clip = torch.cat([base, base + torch.tensor([0.1, 0.0, 0.0, 0.0])])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    attr_faces = torch.tensor([[0, 1, 2], [3, 4, 5]])  # 6 attribute vertices, no sharing
    attr = torch.stack([torch.full((6, 1), 1.0), torch.full((6, 1), 2.0)])  # [2, 6, 1] per frame
    attr[:, 3:] += 10.0  # second triangle's copies differ
    out = rasterizer.rasterize(clip, faces, (32, 32))
    values = rasterizer.interpolate(attr, out, attr_faces)
    for b, frame_value in enumerate((1.0, 2.0)):
        tri = out.triangle_id[b]
        assert torch.allclose(values[b, ..., 0][tri == 0], torch.tensor(frame_value))
        assert torch.allclose(values[b, ..., 0][tri == 1], torch.tensor(frame_value + 10.0))
    assert not torch.equal(out.mask[0], out.mask[1])


def test_gradients_reach_exactly_the_vertices_of_covered_triangles(rasterizer: TorchRasterizer) -> None:
    visible = [(-0.8, -0.8), (0.6, -0.7), (0.0, 0.7)]
    off_screen = [(1.2, 0.0), (1.8, 0.2), (1.5, 0.9)]
    hidden = [(-0.3, -0.3), (0.1, -0.3), (-0.1, 0.0)]  # fully behind the visible triangle
    clip = clip_from_ndc(visible + off_screen + hidden, [0.0] * 6 + [0.5] * 3)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    attr = torch.randn(9, 4, requires_grad=True)
    out = rasterizer.rasterize(clip, faces, (32, 32))
    (rasterizer.interpolate(attr, out, faces) ** 2).sum().backward()
    nonzero = (attr.grad.abs().sum(dim=1) > 0).tolist()
    assert nonzero == [True] * 3 + [False] * 6
    assert not out.rast.requires_grad


def test_watertight_closed_mesh_has_no_cracks(rasterizer: TorchRasterizer) -> None:
    # A fan of 64 thin triangles meeting at the centre: every pixel centre inside the outer polygon
    # (away from its boundary) must be covered despite the many shared edges.
    n = 64
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    ring = torch.stack([0.9 * torch.cos(angles), 0.9 * torch.sin(angles)], dim=1)
    verts = [(0.0, 0.0)] + [tuple(p) for p in ring.tolist()]
    faces = torch.tensor([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    out = rasterizer.rasterize(clip_from_ndc(verts), faces, (128, 128))
    px, py = pixel_centres(128, 128)
    well_inside = torch.sqrt(px ** 2 + py ** 2) < 0.9 * math.cos(math.pi / n) - 0.02
    assert bool(out.mask[0, ..., 0][well_inside].all())


def test_small_chunks_give_identical_output() -> None:
    gen = torch.Generator().manual_seed(0)
    clip = torch.cat([torch.rand(2, 30, 2, generator=gen) * 2.2 - 1.1, torch.rand(2, 30, 1, generator=gen) - 0.5,
                      torch.ones(2, 30, 1)], dim=-1)
    faces = torch.randint(0, 30, (40, 3), generator=gen)
    reference = TorchRasterizer().rasterize(clip, faces, (40, 40))
    chunked = TorchRasterizer(RasterizerConfig(backend="torch", max_fragments_per_chunk=37)).rasterize(
        clip, faces, (40, 40))
    assert torch.equal(reference.rast, chunked.rast)
    assert torch.equal(reference.triangle_id, chunked.triangle_id)


def test_invalid_inputs_raise_value_error(rasterizer: TorchRasterizer) -> None:
    clip = clip_from_ndc([(-1, -1), (1, -1), (0, 1)])
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="clip_pos"):
        rasterizer.rasterize(clip[..., :3], faces, (8, 8))
    with pytest.raises(ValueError, match="index outside"):
        rasterizer.rasterize(clip, torch.tensor([[0, 1, 3]]), (8, 8))
    with pytest.raises(ValueError, match="integer"):
        rasterizer.rasterize(clip, faces.float(), (8, 8))
    with pytest.raises(ValueError, match="resolution"):
        rasterizer.rasterize(clip, faces, (0, 8))
    out = rasterizer.rasterize(clip, faces, (8, 8))
    with pytest.raises(ValueError, match="triangles"):
        rasterizer.interpolate(torch.ones(3, 1), out, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(ValueError, match="batch"):
        rasterizer.interpolate(torch.ones(3, 3, 1), out, faces)
    with pytest.raises(NotImplementedError):
        rasterizer.antialias(torch.ones(1, 8, 8, 3), out, clip, faces)


def test_get_rasterizer_choices() -> None:
    assert isinstance(get_rasterizer("auto", "cpu"), TorchRasterizer)
    assert isinstance(get_rasterizer(), TorchRasterizer)  # default device here is the CPU
    assert isinstance(get_rasterizer("torch"), TorchRasterizer)
    with pytest.raises(ValueError, match="auto.*torch.*nvdiffrast"):
        get_rasterizer("opengl")
    if not torch.cuda.is_available():
        with pytest.raises(RasterBackendUnavailable, match="CUDA"):
            get_rasterizer("nvdiffrast")
