"""The rasterizer interface shared by every backend, and its output type.

Conventions (identical for every backend, so backends are interchangeable):

- Input positions are homogeneous clip-space coordinates ``[B, V, 4]`` = (x, y, z, w), as in
  OpenGL and nvdiffrast. The visible volume is ``-w <= x, y, z <= w`` with ``w > 0``.
- Pixel ``(i, j)`` (row ``i``, column ``j``) of an ``H x W`` image samples the NDC point
  ``x = (j + 0.5) / W * 2 - 1``, ``y = (i + 0.5) / H * 2 - 1``: **row 0 is NDC y = -1**. This is
  nvdiffrast's own memory layout, so its output is used unflipped. :func:`perspective_clip`
  (projection.py) maps an OpenCV camera's image-down axis onto NDC +y, so perspective renders come
  out with row 0 at the top of the picture, exactly where :meth:`Camera.project` puts it.
- Depth test: the fragment with the smallest ``z / w`` wins (ties: the lowest triangle index).
  Fragments with ``z / w`` outside ``[-1, 1]`` are discarded, which equals clipping against the
  near and far planes; triangles entirely outside the clip volume are dropped. There is no
  back-face culling: both windings are drawn.
- ``rast`` ``[B, H, W, 4]`` float32 = (u, v, z / w, triangle_id + 1) exactly like nvdiffrast:
  ``(u, v)`` are perspective-correct barycentrics weighting vertices 0 and 1 of the triangle
  (vertex 2 gets ``1 - u - v``), and ``0`` in the last channel means background. Triangle ids are
  stored as floats, exact up to 2**24 triangles.
- Gradients: :meth:`Rasterizer.interpolate` is differentiable with respect to the attributes.
  Gradients with respect to vertex positions are *not* part of the interface (the torch backend
  returns a detached ``rast``; nvdiffrast's own position gradients flow through its backend).
"""

from __future__ import annotations

import abc
import dataclasses
import logging

import torch
from torch import Tensor

from avatar4d.config import Config

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "nvdiffrast")


class RasterBackendUnavailable(RuntimeError):
    """A rasterizer backend cannot run here (library missing, no CUDA device, build failed)."""


@dataclasses.dataclass
class RasterizerConfig(Config):
    """Which backend to build and its tuning knobs.

    ``backend``: ``"auto"`` (nvdiffrast on CUDA when it imports, torch otherwise), ``"torch"`` or
    ``"nvdiffrast"``. ``max_fragments_per_chunk`` bounds the torch backend's working memory (about
    100 bytes per candidate fragment). ``nvdiffrast_context``: ``"cuda"`` or ``"gl"``.
    """

    backend: str = "auto"
    max_fragments_per_chunk: int = 1 << 20
    nvdiffrast_context: str = "cuda"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown rasterizer backend {self.backend!r}; choose from {list(BACKENDS)}")
        if self.max_fragments_per_chunk < 1:
            raise ValueError(f"max_fragments_per_chunk must be >= 1, got {self.max_fragments_per_chunk}")
        if self.nvdiffrast_context not in ("cuda", "gl"):
            raise ValueError(f"nvdiffrast_context must be 'cuda' or 'gl', got {self.nvdiffrast_context!r}")


@dataclasses.dataclass
class RasterOutput:
    """What :meth:`Rasterizer.rasterize` returns.

    ``rast`` [B, H, W, 4] float32 in nvdiffrast's layout (see the module docstring);
    ``mask`` [B, H, W, 1] bool, True where a triangle covers the pixel;
    ``triangle_id`` [B, H, W] long, the covering face's index or -1 for background;
    ``num_triangles``: F of the face tensor that was rasterized;
    ``rast_db``: nvdiffrast's image-space barycentric derivatives when that backend made it.
    """

    rast: Tensor
    mask: Tensor
    triangle_id: Tensor
    num_triangles: int
    rast_db: Tensor | None = None

    @classmethod
    def from_rast(cls, rast: Tensor, num_triangles: int, rast_db: Tensor | None = None) -> RasterOutput:
        """Build the convenience fields from an nvdiffrast-layout ``rast`` tensor."""
        triangle_id = torch.round(rast[..., 3].detach()).long() - 1  # [B, H, W]
        return cls(rast=rast, mask=(triangle_id >= 0)[..., None], triangle_id=triangle_id,
                   num_triangles=num_triangles, rast_db=rast_db)

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.rast.shape[1]), int(self.rast.shape[2])

    @property
    def barycentrics(self) -> Tensor:
        """[B, H, W, 3] perspective-correct weights of the triangle's vertices 0, 1, 2 (0 on background)."""
        uv = self.rast[..., :2]
        third = (1.0 - uv[..., :1] - uv[..., 1:2]) * self.mask
        return torch.cat([uv, third], dim=-1)

    @property
    def depth_ndc(self) -> Tensor:
        """[B, H, W, 1] ``z / w`` of the visible surface (0 on background)."""
        return self.rast[..., 2:3]


def check_resolution(resolution: tuple[int, int] | list[int] | int) -> tuple[int, int]:
    """Normalise ``resolution`` to ``(H, W)`` of positive ints (an int means a square image)."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    if len(resolution) != 2 or any(int(r) != r or int(r) < 1 for r in resolution):
        raise ValueError(f"resolution must be (H, W) positive integers, got {resolution!r}")
    return int(resolution[0]), int(resolution[1])


def check_faces(faces: Tensor, num_vertices: int, what: str = "faces") -> None:
    """Raise ValueError unless ``faces`` is an integer [F, 3] tensor indexing ``num_vertices``."""
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{what} must be [F, 3], got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"{what} must be an integer tensor, got {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ValueError(f"{what} index outside [0, {num_vertices})")


def check_clip_pos(clip_pos: Tensor) -> None:
    if clip_pos.ndim != 3 or clip_pos.shape[-1] != 4:
        raise ValueError(f"clip_pos must be [B, V, 4] homogeneous clip coordinates, got {tuple(clip_pos.shape)}")
    if not clip_pos.dtype.is_floating_point:
        raise ValueError(f"clip_pos must be floating point, got {clip_pos.dtype}")


def check_attr(attr: Tensor, raster: RasterOutput, faces: Tensor) -> Tensor:
    """Validate interpolate() inputs; returns ``attr`` as [B or 1, V, C]."""
    if attr.ndim == 2:
        attr = attr[None]
    if attr.ndim != 3:
        raise ValueError(f"attr must be [V, C] or [B, V, C], got {tuple(attr.shape)}")
    batch = raster.rast.shape[0]
    if attr.shape[0] not in (1, batch):
        raise ValueError(f"attr batch {attr.shape[0]} does not match the raster batch {batch}")
    check_faces(faces, attr.shape[1], what="attribute faces")
    if faces.shape[0] != raster.num_triangles:
        raise ValueError(f"attribute faces have {faces.shape[0]} triangles but {raster.num_triangles} "
                         "were rasterized (attribute faces must match the position faces one to one)")
    return attr


def interpolate_barycentric(attr: Tensor, raster: RasterOutput, faces: Tensor) -> Tensor:
    """Reference attribute interpolation in plain torch, for a ``rast`` from any backend.

    attr [V, C] or [B, V, C] (batch 1 broadcasts), faces [F, 3] the attribute's own indices
    → [B, H, W, C], zero on background; differentiable with respect to ``attr``.
    """
    attr = check_attr(attr, raster, faces)
    batch, height, width = raster.triangle_id.shape
    covered = raster.triangle_id >= 0  # [B, H, W]
    batch_idx = covered.nonzero(as_tuple=True)[0]  # [N]
    tri = raster.triangle_id[covered]  # [N]
    uv = raster.rast[covered][:, :2].to(attr.dtype)  # [N, 2]
    weights = torch.cat([uv, 1.0 - uv.sum(dim=1, keepdim=True)], dim=1)  # [N, 3]
    corner_idx = faces.to(device=attr.device, dtype=torch.long)[tri]  # [N, 3]
    row = batch_idx[:, None] if attr.shape[0] > 1 else torch.zeros_like(batch_idx)[:, None]
    corners = attr[row, corner_idx]  # [N, 3, C]
    values = (weights[..., None] * corners).sum(dim=1)  # [N, C]
    out = attr.new_zeros(batch, height, width, attr.shape[-1])
    out[covered] = values
    return out


class Rasterizer(abc.ABC):
    """Triangle rasterizer with nvdiffrast's interface (see the module docstring for conventions)."""

    name: str = "abstract"

    @abc.abstractmethod
    def rasterize(self, clip_pos: Tensor, faces: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        """Rasterize ``faces`` [F, 3] (int) of ``clip_pos`` [B, V, 4] into ``resolution`` = (H, W)."""

    def interpolate(self, attr: Tensor, raster: RasterOutput, faces: Tensor) -> Tensor:
        """Interpolate per-vertex ``attr`` [V, C] or [B, V, C] at every pixel → [B, H, W, C].

        ``faces`` [F, 3] indexes ``attr`` and corresponds row by row to the rasterized position
        faces (UVs use their own ``uv_faces``). Background pixels are 0. Differentiable in attr.
        """
        return interpolate_barycentric(attr, raster, faces)

    @property
    def supports_antialias(self) -> bool:
        return False

    def antialias(self, color: Tensor, raster: RasterOutput, clip_pos: Tensor, faces: Tensor) -> Tensor:
        """Silhouette anti-aliasing of ``color`` [B, H, W, C] (optional; see ``supports_antialias``)."""
        raise NotImplementedError(f"the {self.name} rasterizer has no antialias(); "
                                  "check supports_antialias or use the nvdiffrast backend")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
