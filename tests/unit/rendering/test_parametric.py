import pytest
import torch

from avatar4d.rendering.parametric import (
    FaceBox,
    ParametricTriplane,
    blend_into_frontal_plane,
    fill_holes,
    mouth_alphas,
)


def test_official_face_box_and_its_world_window():
    box = FaceBox.official(256)
    assert (box.row0, box.row1, box.col0, box.col1) == (57, 185, 64, 192)
    assert box.size == (128, 128)
    x0, x1, y0, y1 = box.world_bounds(1.0)
    assert (x0, x1) == pytest.approx((-0.25, 0.25))
    assert (y0, y1) == pytest.approx((57 / 256 - 0.5, 185 / 256 - 0.5))
    small = FaceBox.official(64)
    assert (small.row0, small.row1, small.col0, small.col1) == (14, 46, 16, 48)


def test_fill_holes_fills_enclosed_regions_only():
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    mask[:, :, 12:20, 12:20] = 0  # a hole (the mouth)
    mask[1, :, 0:5, 0:5] = 1  # an unrelated blob touching the border in sample 1
    filled, holes = fill_holes(mask, seed="border")
    assert holes[:, :, 12:20, 12:20].eq(1).all()
    assert holes.sum() == 2 * 64
    assert filled[:, :, 8:24, 8:24].eq(1).all()
    assert filled[0].sum() == 16 * 16
    # background connected to the border stays background
    assert filled[:, :, 0, 10].eq(0).all() and filled[:, :, 30, 30].eq(0).all()


def test_fill_holes_with_a_c_shaped_mouth_open_to_the_border_is_not_filled():
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    mask[:, :, 6:10, 6:16] = 0  # channel to the right border
    filled, holes = fill_holes(mask)
    assert holes.sum() == 0 and torch.equal(filled, mask)


def test_corner_seeded_fill_follows_the_official_flood_fill():
    """cv2.floodFill from (0, 0) (official fill_mouth): background cut off from the corner by a band
    that runs border to border is a hole; seeding from the whole border keeps it background."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, 10:12, :] = 1  # a full-width band: rows 12-15 are not connected to the corner
    _, corner_holes = fill_holes(mask)  # default: the official corner seed
    _, border_holes = fill_holes(mask, seed="border")
    assert corner_holes[:, :, 12:].eq(1).all() and corner_holes[:, :, :10].eq(0).all()
    assert border_holes.sum() == 0
    with pytest.raises(ValueError, match="seed"):
        fill_holes(mask, seed="centre")


def test_mouth_alpha_drops_the_first_87_rows_of_the_chin_first_render():
    """Official rasterize: upper_mouth_mask[:, :, :87] = 0 on the chin-first 256² render; the hole rows
    from 87 on (the upper mouth cavity) stay in the conditioning alpha."""
    mask = torch.ones(1, 1, 256, 256)
    mask[:, :, 60:120, 100:150] = 0  # a mouth hole spanning row 87
    full, conditioning = mouth_alphas(mask, 87)
    assert full.eq(1).all()  # every hole is filled for the paste
    assert conditioning[:, :, 60:87, 100:150].eq(0).all()  # chin-side rows: not mouth
    assert conditioning[:, :, 87:120, 100:150].eq(1).all()  # upper mouth cavity kept
    _, small = mouth_alphas(torch.nn.functional.interpolate(mask, size=(64, 64)), 87)  # 87 scales to 22 rows
    assert small[:, :, 15:22, 25:37].eq(0).all() and small[:, :, 22:30, 25:37].eq(1).all()


def test_stacked_round_trip_and_validation():
    tri = ParametricTriplane(texture=torch.randn(2, 8, 16, 16), static=torch.randn(2, 3, 8, 16, 16))
    stacked = tri.stacked()
    assert stacked.shape == (2, 4, 8, 16, 16)
    back = ParametricTriplane.from_stacked(stacked)
    assert torch.equal(back.texture, tri.texture) and torch.equal(back.static, tri.static)
    with pytest.raises(ValueError):
        ParametricTriplane(texture=torch.randn(2, 8, 8, 8), static=torch.randn(2, 3, 8, 16, 16))
    with pytest.raises(ValueError):
        ParametricTriplane.from_stacked(torch.randn(2, 3, 8, 16, 16))


def test_compose_blends_only_inside_the_face_box_of_plane_zero():
    res = 64
    tri = ParametricTriplane(texture=torch.full((1, 4, res, res), 5.0), static=torch.zeros(1, 3, 4, res, res))
    box = FaceBox.official(res)
    h, w = 32, 32
    grid = torch.zeros(1, h, w, 2)  # every pixel samples the texture centre
    mask = torch.ones(1, 1, h, w)
    planes = tri.compose(grid, mask, box)
    assert planes.shape == (1, 3, 4, res, res)
    inside = box.crop(planes[:, 0])
    assert torch.allclose(inside, torch.full_like(inside, 5.0), atol=1e-5)
    outside = planes[:, 0].clone()
    outside[..., box.row0:box.row1, box.col0:box.col1] = 0
    assert outside.abs().max() == 0
    assert torch.equal(planes[:, 1:], tri.static[:, 1:])
    empty = tri.compose(grid, torch.zeros(1, 1, h, w), box)
    assert torch.equal(empty, tri.static)


def test_blend_is_differentiable_in_window_and_static():
    static = torch.randn(1, 3, 2, 32, 32, requires_grad=True)
    window = torch.randn(1, 2, 16, 16, requires_grad=True)
    alpha = torch.full((1, 1, 16, 16), 0.5)
    blend_into_frontal_plane(static, window, alpha, FaceBox.official(32)).sum().backward()
    assert window.grad.abs().sum() > 0 and static.grad[:, 1:].eq(1).all()
