"""The official FaceVerse v3 UV-coordinate image (what the released Next3D++ GAN was trained on).

Reproduces InvertAvatar ``data_preprocess/FaceVerse/renderer.py`` (``Faceverse_manager``, commit
2e71361227f86f599f8d8ada788492569ba01540; the same construction as ``render_orth`` in
``data_preprocess/preprocess_faceverse.py``), from the user's own files (the licence does not let us
ship them): ``faceverse_v3_1.npy`` (``uv_per_ver``, ``ver_inds``), ``v31_face_mask_new.npy`` (one
value per vertex) and ``fv2fl_30.npy`` (4 × 4, FaceVerse → FLAME-like frame). Steps, with the source
lines:

1. per-vertex UVs; those with v ∈ (0.273, 0.727) and u ∈ (0.195, 0.805) (the face region) are
   enlarged × 1.4 about the UV centre (0.5, 0.5) (renderer.py:24-25);
2. the per-vertex mask, with the eyeball vertices ``ver_inds[0]:ver_inds[2]`` set to 1 (:29-30); the
   attributes are (2·uv − 1, mask) (:33);
3. vertices: ``vs @ R.T + t`` with ``fv2fl_30`` (:61), then ``(v + (0, 0.005, 0)) · 5`` (:17, :63-64)
   and an orthographic view from +z (the official flips z and renders with a pytorch3d camera at
   z = 10, focal (−1, −1): the nearest surface is the one with the largest z, column = (x + 1)·256,
   row = (y + 1)·256 on the 512² render (:13-14, :66));
4. rendering = (u, v, mask, coverage) · (coverage · mask) (:72-74), cropped to columns 128:384 and
   rows 114:370 (:40, :76-77), resized to the requested side by bilinear interpolation (:79); the
   alpha channel is thresholded at 0.5 (:82).

The crop is rasterized directly as the window x ∈ [−0.5, 0.5], y ∈ [−0.5547, 0.4453] at 256² (the
same pixel centres as the 512² render's crop). Remaining difference: FaceVerse v3's eyeball rotation
(``eye_coeff``) is not modelled by our FaceVerse model, so the eyes stay in their rest pose.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar4d.config import Config
from avatar4d.geometry.raster import OrthographicView, orthographic_clip
from avatar4d.geometry.uv_image import UVCoordinateImage, UVImageBuilder, resize_official

FACE_UV_REGION = ((0.195, 0.805), (0.273, 0.727))  # (u range, v range) enlarged, renderer.py:24
FACE_UV_ENLARGE = 1.4  # renderer.py:25
ORTHO_SCALE = 5.0  # renderer.py:17
ORTHO_SHIFT = (0.0, 0.005, 0.0)  # renderer.py:17
RENDER_RESOLUTION = 512  # renderer.py:13
CROP = (128, 114, 256, 256)  # (left, top, width, height) of the 512² render, renderer.py:40
ALPHA_THRESHOLD = 0.5  # renderer.py:82


def crop_window() -> tuple[tuple[float, float], tuple[float, float]]:
    """(x range, y range) of the crop in the scaled frame: pixel p of the 512² render spans
    [p, p + 1) · 2 / 512 − 1."""
    left, top, width, height = CROP
    to_ndc = lambda pixel: pixel * 2.0 / RENDER_RESOLUTION - 1.0  # noqa: E731
    return (to_ndc(left), to_ndc(left + width)), (to_ndc(top), to_ndc(top + height))


def enlarge_face_uvs(uv: np.ndarray) -> np.ndarray:
    """Per-vertex UVs [V, 2] with the face region enlarged × 1.4 about (0.5, 0.5) (strict bounds, as the source)."""
    (u_lo, u_hi), (v_lo, v_hi) = FACE_UV_REGION
    uv = np.array(uv, dtype=np.float64, copy=True)
    inside = (uv[:, 1] > v_lo) & (uv[:, 1] < v_hi) & (uv[:, 0] > u_lo) & (uv[:, 0] < u_hi)
    uv[inside] = (uv[inside] - 0.5) * FACE_UV_ENLARGE + 0.5
    return uv


@dataclasses.dataclass
class FaceVerseUVFiles(Config):
    """Where the user's official files are: the vertex mask and the FaceVerse → FLAME transform."""

    face_mask: str = ""  # v31_face_mask_new.npy
    fv2fl: str = ""      # fv2fl_30.npy


def _plain_array(path: str | Path, what: str) -> np.ndarray:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)  # plain numeric arrays: nothing to unpickle
    except ValueError as error:
        raise ValueError(f"{path} is not a plain numeric .npy array ({error})") from None


def official_vertex_attributes(uv_per_vertex: np.ndarray, face_mask: np.ndarray,
                               ver_inds: np.ndarray) -> np.ndarray:
    """[V, 3]: (2·uv − 1 with the face region enlarged, mask with the eyeballs set to 1)."""
    uv = enlarge_face_uvs(uv_per_vertex)
    mask = np.asarray(face_mask, dtype=np.float64).reshape(-1).copy()
    if mask.shape[0] != uv.shape[0]:
        raise ValueError(f"the face mask has {mask.shape[0]} values for {uv.shape[0]} vertices")
    inds = np.asarray(ver_inds, dtype=np.int64).reshape(-1)
    if inds.shape[0] < 3:
        raise ValueError(f"ver_inds must hold at least 3 indices (eyeballs are ver_inds[0]:ver_inds[2]), got {inds}")
    mask[inds[0]:inds[2]] = 1.0
    return np.concatenate([uv * 2.0 - 1.0, mask[:, None]], axis=1)


class FaceVerseUVImage(UVImageBuilder):
    """The official construction above for FaceVerse-frame vertices; world vertices of a
    :class:`~avatar4d.geometry.morphable.FaceVerseModel` are mapped back to its frame first (``to_model_frame``)."""

    def __init__(self, faces: Tensor, attributes: np.ndarray, fv2fl: np.ndarray, resolution: int,
                 backend: str = "auto", to_model_frame=None) -> None:
        super().__init__(attributes.shape[0], resolution, backend)
        transform = np.asarray(fv2fl, dtype=np.float64)
        if transform.shape != (4, 4):
            raise ValueError(f"fv2fl must be a 4 × 4 matrix, got shape {transform.shape}")
        self.register_buffer("faces", faces.clone().long(), persistent=False)
        self.register_buffer("attributes", torch.tensor(attributes, dtype=torch.float32), persistent=False)
        self.register_buffer("rotation", torch.tensor(transform[:3, :3], dtype=torch.float32), persistent=False)
        self.register_buffer("translation", torch.tensor(transform[:3, 3], dtype=torch.float32), persistent=False)
        self.to_model_frame = to_model_frame
        (x_lo, x_hi), (y_lo, y_hi) = crop_window()
        assert x_hi - x_lo == y_hi - y_lo  # a square crop
        # view axes: x → columns, y → rows, depth = −z (nearest = largest z); the window is the crop
        self.view = OrthographicView(center=(x_lo - (-0.5), y_lo - (-0.5), 0.0), extent=(-0.5, 0.5),
                                     depth_range=(-1e3, 1e3))
        self.crop_side = CROP[2]

    def scaled_vertices(self, model_vertices: Tensor) -> Tensor:
        """FaceVerse-frame vertices [B, V, 3] → the official scaled frame (fv2fl, shift, × 5)."""
        flame = model_vertices @ self.rotation.T + self.translation  # [B, V, 3]
        shift = torch.tensor(ORTHO_SHIFT, dtype=flame.dtype, device=flame.device)
        return (flame + shift) * ORTHO_SCALE

    def forward(self, vertices: Tensor) -> UVCoordinateImage:
        self.check_vertices(vertices)
        model_vertices = vertices.float() if self.to_model_frame is None else self.to_model_frame(vertices.float())
        clip = orthographic_clip(self.scaled_vertices(model_vertices), self.view)  # [B, V, 4]
        rasterizer = self.rasterizer(vertices.device)
        raster = rasterizer.rasterize(clip, self.faces, (self.crop_side, self.crop_side))
        values = rasterizer.interpolate(self.attributes.to(clip.dtype), raster, self.faces)  # [B, H, W, 3]
        coverage = raster.mask.to(clip.dtype)  # [B, H, W, 1]
        rendering = torch.cat([values * coverage, coverage], dim=-1).permute(0, 3, 1, 2)  # [B, 4, H, W]
        rendering = rendering * (rendering[:, 3:4] * rendering[:, 2:3])  # × coverage · mask (renderer.py:72-74)
        rendering = resize_official(rendering, self.resolution)  # [B, 4, R, R]
        alpha = (rendering[:, 2:3] >= ALPHA_THRESHOLD).to(rendering.dtype)  # renderer.py:82
        return UVCoordinateImage(grid=rendering[:, :2].permute(0, 2, 3, 1).contiguous(), alpha=alpha)


def load_official_uv_files(files: FaceVerseUVFiles) -> tuple[np.ndarray, np.ndarray]:
    """(per-vertex face mask [V], fv2fl [4, 4]) read from the user's files."""
    if not files.face_mask or not files.fv2fl:
        raise ValueError("the official FaceVerse UV image needs both v31_face_mask_new.npy and fv2fl_30.npy")
    return _plain_array(files.face_mask, "FaceVerse face mask"), _plain_array(files.fv2fl, "fv2fl transform")
