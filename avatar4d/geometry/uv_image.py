"""The UV-coordinate image: what a Next3D-style generator is conditioned on.

For an expression, the head mesh is rasterized orthographically over the face box of the frontal
plane and every pixel receives the UV coordinate of the surface it sees and an alpha; the generator
samples its UV-space neural texture there. The official pipelines store this image on disk
(InvertAvatar: ``[R, R, 3]`` float16 ``.npy`` of (u, v) in [−1, 1] and a 0/1 alpha, rows running
chin → forehead). :class:`UVCoordinateImage` is that input as a typed value; a head model makes it
with a :class:`UVImageBuilder` (:meth:`~avatar4d.geometry.morphable.MorphableModel.uv_image_builder`):

- :class:`CoverageUVImage`: the mesh's UV atlas interpolated over the face box, alpha = plain
  coverage. The procedural head (and FLAME) use it: it is how the procedural world is conditioned.
- :class:`~avatar4d.geometry.morphable.faceverse_uv.FaceVerseUVImage`: the official FaceVerse v3
  construction the released Next3D++ GAN was trained on (enlarged face UVs, face-mask alpha, the
  ``fv2fl_30`` transform, orthographic scale 5 and shift).
"""

from __future__ import annotations

import abc
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.geometry.raster import OrthographicView, get_rasterizer, render_uv_to_plane


@dataclasses.dataclass
class UVCoordinateImage:
    """``grid`` [B, R, R, 2]: ``grid_sample`` coordinates (u → columns, v → rows) in [−1, 1], zero where
    alpha is 0; ``alpha`` [B, 1, R, R] in [0, 1]. Rows run chin → forehead (world y grows with the row)."""

    grid: Tensor
    alpha: Tensor

    def __post_init__(self) -> None:
        if self.grid.ndim != 4 or self.grid.shape[-1] != 2:
            raise ValueError(f"a UV-coordinate grid is [B, R, R, 2], got {tuple(self.grid.shape)}")
        if self.alpha.shape != (self.grid.shape[0], 1, *self.grid.shape[1:3]):
            raise ValueError(f"alpha {tuple(self.alpha.shape)} does not fit the grid {tuple(self.grid.shape)}")

    @property
    def resolution(self) -> int:
        return self.grid.shape[1]

    @classmethod
    def from_official(cls, image: Tensor) -> UVCoordinateImage:
        """The official on-disk form [B, R, R, 3] (or [R, R, 3]): (u, v, alpha) → a typed image."""
        image = torch.as_tensor(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"an official UV-coordinate image is [B, R, R, 3], got {tuple(image.shape)}")
        image = image.float()
        return cls(grid=image[..., :2].contiguous(), alpha=image[..., 2:].permute(0, 3, 1, 2).contiguous())

    def to_official(self) -> Tensor:
        """[B, R, R, 3]: (u, v, alpha), the layout the official data and ``rasterize`` use."""
        return torch.cat([self.grid, self.alpha.permute(0, 2, 3, 1)], dim=-1)

    def to(self, *args, **kwargs) -> UVCoordinateImage:
        return UVCoordinateImage(self.grid.to(*args, **kwargs), self.alpha.to(*args, **kwargs))


class UVImageBuilder(nn.Module, abc.ABC):
    """Vertices of one head model [B, V, 3] (world frame) → :class:`UVCoordinateImage` at ``resolution``²."""

    def __init__(self, num_vertices: int, resolution: int, backend: str) -> None:
        super().__init__()
        self.num_vertices = num_vertices
        self.resolution = resolution
        self.backend = backend
        self._rasterizer = None
        self._rasterizer_device: torch.device | None = None

    def rasterizer(self, device: torch.device):
        if self._rasterizer is None or self._rasterizer_device != device:
            self._rasterizer = get_rasterizer(self.backend, device=device)
            self._rasterizer_device = device
        return self._rasterizer

    def check_vertices(self, vertices: Tensor) -> None:
        if vertices.ndim != 3 or vertices.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"vertices must be [B, {self.num_vertices}, 3] for this head model, "
                             f"got {tuple(vertices.shape)}")

    @abc.abstractmethod
    def forward(self, vertices: Tensor) -> UVCoordinateImage:
        """vertices [B, V, 3] → UV-coordinate image [B, R, R, 2] + [B, 1, R, R]."""


class CoverageUVImage(UVImageBuilder):
    """The mesh's UV atlas rasterized through ``view`` (the face box), alpha = coverage (0 or 1).

    Topology is held as non-persistent buffers, so a generator that owns this builder keeps the
    release's state dict.
    """

    def __init__(self, faces: Tensor, uv_coords: Tensor, uv_faces: Tensor, num_vertices: int,
                 view: OrthographicView, resolution: int, backend: str = "auto") -> None:
        super().__init__(num_vertices, resolution, backend)
        self.register_buffer("faces", faces.clone().long(), persistent=False)
        self.register_buffer("uv_faces", uv_faces.clone().long(), persistent=False)
        self.register_buffer("uv_coords", uv_coords.clone().float(), persistent=False)
        self.view = view

    def forward(self, vertices: Tensor) -> UVCoordinateImage:
        self.check_vertices(vertices)
        res = self.resolution
        plane = render_uv_to_plane(self.rasterizer(vertices.device), vertices.float(), self.faces, self.uv_coords,
                                   self.uv_faces, self.view, (res, res))
        # grid [B, R, R, 2], alpha [B, 1, R, R]
        return UVCoordinateImage(grid=plane.grid(), alpha=plane.mask.permute(0, 3, 1, 2).float())


def resize_official(image: Tensor, resolution: int) -> Tensor:
    """The official resize of a rendered [B, C, H, W] image: bilinear, ``align_corners=False``, no antialias."""
    if image.shape[-1] == resolution:
        return image
    return F.interpolate(image, size=(resolution, resolution), mode="bilinear", align_corners=False)
