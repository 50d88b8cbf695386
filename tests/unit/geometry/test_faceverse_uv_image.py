"""Issue 9 item 1: the official FaceVerse v3 UV-coordinate image, from a constructed FaceVerse-format
file (no FaceVerse data is shipped or downloaded), checked pixel by pixel against a hand computation
of InvertAvatar's construction (data_preprocess/FaceVerse/renderer.py), and the typed UV-coordinate
image as the generator's conditioning input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar4d.geometry.morphable import FaceParams, FaceVerseConfig, load_faceverse
from avatar4d.geometry.morphable.faceverse_uv import FaceVerseUVFiles, crop_window, enlarge_face_uvs
from avatar4d.geometry.uv_image import CoverageUVImage, UVCoordinateImage

ANGLE, SHIFT_T = 0.3, (0.01, -0.005, 0.03)
RECT = (-0.05, 0.05, -0.06, 0.04)  # x0, x1, y0, y1 of the flat "face" in the FaceVerse frame
N = 9  # vertices per side


def _uv(x, y):
    """The per-vertex UVs: affine in the position, all inside the enlarged face region."""
    return 0.3 + 4.0 * (x - RECT[0]), 0.35 + 3.0 * (y - RECT[2])


def _fv2fl() -> np.ndarray:
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    return np.array([[c, -s, 0, SHIFT_T[0]], [s, c, 0, SHIFT_T[1]], [0, 0, 1, SHIFT_T[2]], [0, 0, 0, 1]])


def _files(tmp_path, mask_value: float, eyeballs: tuple[int, int, int]):
    xs, ys = np.meshgrid(np.linspace(RECT[0], RECT[1], N), np.linspace(RECT[2], RECT[3], N))
    vertices = np.stack([xs.ravel(), ys.ravel(), np.full(N * N, 0.02)], axis=1)
    faces = []
    for i in range(N - 1):
        for j in range(N - 1):
            a, b, c, d = i * N + j, i * N + j + 1, (i + 1) * N + j, (i + 1) * N + j + 1
            faces += [[a, b, d], [a, d, c]]
    u, v = _uv(vertices[:, 0], vertices[:, 1])
    data = {"meanshape": vertices.reshape(1, -1).astype(np.float32),
            "idBase": np.zeros((3 * N * N, 2), np.float32), "exBase": np.zeros((3 * N * N, 2), np.float32),
            "tri": np.array(faces, np.int32), "uv_per_ver": np.stack([u, v], 1), "ver_inds": np.array(eyeballs)}
    np.save(tmp_path / "faceverse_v3_1.npy", data)
    np.save(tmp_path / "v31_face_mask_new.npy", np.full(N * N, mask_value, np.float32))
    np.save(tmp_path / "fv2fl_30.npy", _fv2fl().astype(np.float32))
    return tmp_path / "faceverse_v3_1.npy", FaceVerseUVFiles(face_mask=str(tmp_path / "v31_face_mask_new.npy"),
                                                              fv2fl=str(tmp_path / "fv2fl_30.npy"))


def _hand_image(mask_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid [256, 256, 2], alpha [256, 256]) computed from the official steps, pixel centre by centre."""
    (x_lo, _), (y_lo, _) = crop_window()
    assert (x_lo, y_lo) == (-0.5, 114 * 2 / 512 - 1)  # crop (128, 114, 256, 256) of the 512² render
    centres = (torch.arange(256, dtype=torch.float64) * 2 + 1) / 512
    ys, xs = torch.meshgrid(y_lo + centres, x_lo + centres, indexing="ij")  # row i ↔ y (chin first)
    flame_x, flame_y = xs / 5 - 0.0, ys / 5 - 0.005  # undo × 5 and the (0, 0.005, 0) shift
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    dx, dy = flame_x - SHIFT_T[0], flame_y - SHIFT_T[1]
    fv_x, fv_y = c * dx + s * dy, -s * dx + c * dy  # R.T (flame − t)
    margin = 2e-4  # a pixel is 1/1280 wide here: skip centres within ~1/4 pixel of the edge
    x0, x1, y0, y1 = RECT
    inside = (fv_x > x0 + margin) & (fv_x < x1 - margin) & (fv_y > y0 + margin) & (fv_y < y1 - margin)
    outside = (fv_x < x0 - margin) | (fv_x > x1 + margin) | (fv_y < y0 - margin) | (fv_y > y1 + margin)
    u, v = _uv(fv_x, fv_y)
    grid = torch.stack([(u - 0.5) * 1.4 + 0.5, (v - 0.5) * 1.4 + 0.5], -1) * 2 - 1  # enlarged, to [−1, 1]
    grid = grid * mask_value  # × coverage · mask (coverage 1 inside)
    alpha = torch.full_like(fv_x, float(mask_value * mask_value >= 0.5))
    return grid.float(), alpha.float(), inside, outside


def test_face_region_uvs_are_enlarged_about_the_centre_with_strict_bounds():
    uv = np.array([[0.5, 0.5], [0.3, 0.6], [0.195, 0.5], [0.5, 0.727], [0.9, 0.5], [0.8, 0.3]])
    out = enlarge_face_uvs(uv)
    np.testing.assert_allclose(out[:2], (uv[:2] - 0.5) * 1.4 + 0.5)
    np.testing.assert_allclose(out[2:5], uv[2:5])  # on the bound or outside: unchanged (renderer.py:24)
    np.testing.assert_allclose(out[5], (uv[5] - 0.5) * 1.4 + 0.5)


@pytest.mark.parametrize("mask_value, eyeballs", [(0.6, (0, 0, 0)), (0.6, (0, 5, N * N))])
def test_the_official_construction_pixel_by_pixel(tmp_path, mask_value, eyeballs):
    path, files = _files(tmp_path, mask_value, eyeballs)
    # our world frame differs from the file's (flip_yz, scale, shift): the builder maps back first
    config = FaceVerseConfig(flip_yz=True, scale=2.5, translation=(0.0, 0.1, -0.2))
    head = load_faceverse(path, config=config, landmark_indices=np.arange(68) % (N * N), uv_files=files)
    effective = 1.0 if eyeballs[2] == N * N else mask_value  # ver_inds[0]:ver_inds[2] get mask 1 (renderer.py:30)
    builder = head.uv_image_builder(None, 256, "torch")
    vertices = head.vertices(FaceParams(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 3)))
    image = builder(vertices)
    grid, alpha, inside, outside = _hand_image(effective)
    assert image.grid.shape == (1, 256, 256, 2) and image.alpha.shape == (1, 1, 256, 256)
    assert inside.sum() > 5000 and outside.sum() > 5000
    torch.testing.assert_close(image.grid[0][inside], grid[inside], atol=2e-4, rtol=0)
    assert torch.equal(image.alpha[0, 0][inside], alpha[inside])
    assert not image.grid[0][outside].any() and not image.alpha[0, 0][outside].any()
    # another resolution: the official bilinear resize of the 256² rendering, then the 0.5 threshold
    small = head.uv_image_builder(None, 64, "torch")(vertices)
    full = torch.cat([image.grid[0].permute(2, 0, 1), image.alpha[0] * effective], 0)[None]
    resized = F.interpolate(full, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(small.grid[0], resized[0, :2].permute(1, 2, 0), atol=1e-5, rtol=0)
    assert torch.equal(small.alpha[0, 0], (resized[0, 2] * effective >= 0.5).float())


def test_without_the_official_files_faceverse_and_the_procedural_head_use_coverage(tmp_path):
    from avatar4d.geometry.morphable import default_head_model
    from avatar4d.geometry.raster import OrthographicView

    path, _ = _files(tmp_path, 1.0, (0, 0, 0))
    view = OrthographicView()
    plain = load_faceverse(path, landmark_indices=np.arange(68) % (N * N))
    assert isinstance(plain.uv_image_builder(view, 32), CoverageUVImage)
    assert isinstance(default_head_model("tiny").uv_image_builder(view, 32), CoverageUVImage)
    with pytest.raises(ValueError, match="fv2fl"):
        load_faceverse(path, landmark_indices=np.arange(68) % (N * N),
                       uv_files=FaceVerseUVFiles(face_mask=str(tmp_path / "v31_face_mask_new.npy")))


def test_the_generator_takes_a_typed_uv_coordinate_image(tmp_path):
    from avatar4d.geometry.camera import PoseSampler
    from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator

    path, files = _files(tmp_path, 1.0, (0, 0, 0))
    head = load_faceverse(path, landmark_indices=np.arange(68) % (N * N), uv_files=files)
    config = GENERATOR_PRESETS.get("tiny")
    config = config.replace(rendering=config.rendering.replace(deterministic=True))
    torch.manual_seed(0)
    model = Next3DGenerator(config, head=head).eval()
    vertices = head.vertices(FaceParams(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 3)))
    made = model.mesh_conditioner.uv_image(vertices)
    stored = UVCoordinateImage.from_official(made.to_official()[0].half())  # the official data's .npy layout
    z, camera = torch.randn(1, config.backbone.z_dim), PoseSampler().frontal(1)
    with torch.no_grad():
        from_mesh = model(z, camera, vertices, neural_resolution=8)
        from_image = model(z, camera, stored, neural_resolution=8)
    assert made.alpha.sum() > 0
    torch.testing.assert_close(from_image.image, from_mesh.image, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="UV-coordinate image is"):
        model(z, camera, UVCoordinateImage(torch.zeros(1, 8, 8, 2), torch.zeros(1, 1, 8, 8)))
