"""Clip-space helpers: perspective projection from a :class:`Camera`, orthographic plane views.

Both follow the raster pixel convention (base.py): pixel ``(i, j)`` samples NDC
``((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1)`` and a smaller ``z / w`` is nearer.

Perspective: the OpenCV camera's normalised image coordinates ``(u, v)`` in [0, 1]
(:meth:`Camera.project`) become NDC ``(2u - 1, 2v - 1)``, so a world point lands in pixel
``(floor(v H), floor(u W))`` and row 0 is the top of the picture. Depth uses OpenGL's mapping
(``z_cam = near`` → -1, ``far`` → +1).

Orthographic views (for rasterizing a mesh onto triplane planes): a view maps world points to
view coordinates ``R (p - center)``; view x → columns, view y → rows (row 0 = the low end of
``extent``), view z = depth along the viewing direction (``depth_range`` near → far). The presets
reproduce EG3D's plane sampling (``grid_sample`` of ``(a, b) / (box / 2)`` with
``align_corners=False``), so a rendered pixel sits exactly where the triplane sampler reads it:

- ``xy``: columns = world x, rows = world y, viewer at +z looking along -z (the frontal plane);
- ``xz``: columns = x, rows = z, viewer above (+y) looking down; ``zx`` its transpose (EG3D's
  third plane, a known quirk);
- ``zy`` / ``yz``: side planes, viewer at +x looking along -x.

:func:`view_for_axes` builds the view of any axis pair; :func:`triplane_views` gives the three
views of a triplane convention (``eg3d``, ``next3dpp``, ``next3d``, ``corrected``, the names of
:mod:`avatar4d.rendering.planes`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from avatar4d.config import Config, PresetRegistry
from avatar4d.geometry.camera import Camera

Row3 = tuple[float, float, float]


def _check_vertices(vertices: Tensor) -> Tensor:
    if vertices.ndim == 2:
        vertices = vertices[None]
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be [B, V, 3] or [V, 3], got {tuple(vertices.shape)}")
    return vertices


def perspective_projection(intrinsics: Tensor, near: float = 0.1, far: float = 10.0) -> Tensor:
    """[B, 4, 4] clip-from-camera matrices for OpenCV cameras with normalised ``intrinsics`` [B, 3, 3]."""
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    if intrinsics.ndim == 2:
        intrinsics = intrinsics[None]
    proj = intrinsics.new_zeros(intrinsics.shape[0], 4, 4)
    proj[:, 0, :3] = 2.0 * intrinsics[:, 0] - intrinsics.new_tensor([0.0, 0.0, 1.0])  # x_ndc = 2u - 1
    proj[:, 1, :3] = 2.0 * intrinsics[:, 1] - intrinsics.new_tensor([0.0, 0.0, 1.0])  # y_ndc = 2v - 1
    proj[:, 2, 2] = (far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = 1.0  # w = z_cam
    return proj


def clip_from_world(camera: Camera, near: float = 0.1, far: float = 10.0) -> Tensor:
    """[B, 4, 4] matrices taking homogeneous world points to clip space."""
    return perspective_projection(camera.intrinsics, near, far) @ camera.world2cam()


def perspective_clip(vertices: Tensor, camera: Camera, near: float = 0.1, far: float = 10.0) -> Tensor:
    """World vertices [B, V, 3] (or [V, 3]; batch 1 broadcasts against the camera) → clip [B, V, 4].

    Differentiable; consistent with :meth:`Camera.project` (see the module docstring).
    """
    vertices = _check_vertices(vertices)
    matrix = clip_from_world(camera, near, far).to(vertices.dtype)  # [Bc, 4, 4]
    if vertices.shape[0] not in (1, matrix.shape[0]) and matrix.shape[0] != 1:
        raise ValueError(f"vertex batch {vertices.shape[0]} does not match camera batch {matrix.shape[0]}")
    homo = torch.cat([vertices, torch.ones_like(vertices[..., :1])], dim=-1)  # [B, V, 4]
    return homo @ matrix.transpose(1, 2)  # [B, V, 4]


@dataclasses.dataclass
class OrthographicView(Config):
    """An orthographic view of a world box: rows of ``rotation`` are the view axes in world coords.

    ``extent`` (lo, hi) bounds both in-plane view axes (EG3D's box_warp 1 → (-0.5, 0.5));
    ``depth_range`` (near, far) bounds view z (the viewing direction). Geometry outside is dropped.
    """

    rotation: tuple[Row3, Row3, Row3] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    center: Row3 = (0.0, 0.0, 0.0)
    extent: tuple[float, float] = (-0.5, 0.5)
    depth_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        rot = torch.tensor(self.rotation, dtype=torch.float64, device="cpu")
        identity = torch.eye(3, dtype=torch.float64, device="cpu")
        if rot.shape != (3, 3) or not torch.allclose(rot @ rot.T, identity, atol=1e-6):
            raise ValueError(f"OrthographicView.rotation must be an orthonormal 3x3 matrix, got {self.rotation}")
        if not self.extent[0] < self.extent[1]:
            raise ValueError(f"OrthographicView.extent must be (lo, hi) with lo < hi, got {self.extent}")
        if not self.depth_range[0] < self.depth_range[1]:
            raise ValueError(f"OrthographicView.depth_range must be (near, far) with near < far, "
                             f"got {self.depth_range}")

    @classmethod
    def preset(cls, name: str, **overrides) -> OrthographicView:
        """A named view: ``xy`` (front), ``xz`` (top), ``zx`` (EG3D's third plane), ``zy``/``yz`` (side)."""
        return ORTHOGRAPHIC_VIEWS.get(name, **overrides)

    def rotation_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return torch.tensor(self.rotation, dtype=dtype, device=device)

    def world_to_view(self, points: Tensor) -> Tensor:
        """[..., 3] world points → [..., 3] view coordinates (x → columns, y → rows, z → depth)."""
        rot = self.rotation_tensor(points.dtype, points.device)
        center = torch.tensor(self.center, dtype=points.dtype, device=points.device)
        return (points - center) @ rot.T

    def view_to_world(self, view_points: Tensor) -> Tensor:
        """Inverse of :meth:`world_to_view`."""
        rot = self.rotation_tensor(view_points.dtype, view_points.device)
        return view_points @ rot + torch.tensor(self.center, dtype=view_points.dtype, device=view_points.device)

    def depth_from_ndc(self, z_ndc: Tensor) -> Tensor:
        """NDC depth (as in ``rast[..., 2]``) → view-space depth (exact: orthographic depth is linear)."""
        near, far = self.depth_range
        return near + (z_ndc + 1.0) * 0.5 * (far - near)

    def pixel_centers(self, resolution: tuple[int, int], dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
        """[H, W, 2] in-plane view coordinates (view x, view y) of the pixel centres."""
        height, width = resolution
        lo, hi = self.extent
        cols = lo + (torch.arange(width, dtype=dtype, device=device) + 0.5) / width * (hi - lo)
        rows = lo + (torch.arange(height, dtype=dtype, device=device) + 0.5) / height * (hi - lo)
        return torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)


AXIS_NAMES = "xyz"


def view_for_axes(columns_axis: int, rows_axis: int, **overrides) -> OrthographicView:
    """The view whose columns follow world axis ``columns_axis`` and rows ``rows_axis`` (0 = x,
    1 = y, 2 = z), seen from the + side of the remaining axis (view depth = minus that coordinate)."""
    if {columns_axis, rows_axis} - {0, 1, 2} or columns_axis == rows_axis:
        raise ValueError(f"need two different world axes in 0..2, got ({columns_axis}, {rows_axis})")
    depth_axis = 3 - columns_axis - rows_axis
    eye = torch.eye(3, dtype=torch.float64)
    rows = torch.stack([eye[columns_axis], eye[rows_axis], -eye[depth_axis]]).tolist()
    rotation = tuple(tuple(float(v) + 0.0 for v in row) for row in rows)
    return OrthographicView(rotation=rotation, **overrides)  # type: ignore[arg-type]


ORTHOGRAPHIC_VIEWS: PresetRegistry[OrthographicView] = PresetRegistry("orthographic view")
for _cols, _rows in ((0, 1), (0, 2), (2, 0), (2, 1), (1, 2)):
    ORTHOGRAPHIC_VIEWS.register(AXIS_NAMES[_cols] + AXIS_NAMES[_rows])(
        lambda c=_cols, r=_rows: view_for_axes(c, r))

# Plane order of each triplane convention (the names and pairs of avatar4d.rendering.planes).
TRIPLANE_VIEW_CONVENTIONS = {"eg3d": ("xy", "xz", "zx"), "next3dpp": ("xy", "xz", "zx"),
                             "next3d": ("xy", "xz", "zy"), "corrected": ("xy", "xz", "yz")}


def triplane_views(convention: str = "eg3d", **overrides) -> tuple[OrthographicView, ...]:
    """The three views matching a triplane's planes, in plane order (``overrides`` apply to all)."""
    if convention not in TRIPLANE_VIEW_CONVENTIONS:
        raise ValueError(f"unknown triplane convention {convention!r}; choose from {sorted(TRIPLANE_VIEW_CONVENTIONS)}")
    return tuple(OrthographicView.preset(name, **overrides) for name in TRIPLANE_VIEW_CONVENTIONS[convention])


def orthographic_clip(vertices: Tensor, view: OrthographicView) -> Tensor:
    """World vertices [B, V, 3] (or [V, 3]) → clip [B, V, 4] (w = 1) for ``view``; differentiable."""
    vertices = _check_vertices(vertices)
    local = view.world_to_view(vertices)  # [B, V, 3]
    lo, hi = view.extent
    near, far = view.depth_range
    xy = (local[..., :2] - lo) * (2.0 / (hi - lo)) - 1.0  # [B, V, 2]
    z = (local[..., 2:3] - near) * (2.0 / (far - near)) - 1.0  # [B, V, 1]
    return torch.cat([xy, z, torch.ones_like(z)], dim=-1)
