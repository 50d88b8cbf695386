"""Render a mesh's UV coordinates into an orthographic plane (Next3D's texture rasterization).

Next3D resamples a UV-space neural texture onto the triplane's frontal plane: the mesh of the
current expression is rasterized orthographically onto the plane, every covered pixel receives
the UV coordinate of the surface point visible there, and ``grid_sample`` of the texture at those
UVs gives the plane's features.

UV convention: ``uv = (u, v)`` in [0, 1] addresses a texture tensor ``[C, Ht, Wt]`` with u along
columns and v along rows (v = 0 is texture row 0), i.e. ``grid = 2 * uv - 1`` with
``align_corners=False``. UVs that follow OpenGL's v-up convention need ``flip_v=True``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar4d.geometry.raster.base import Rasterizer, check_resolution
from avatar4d.geometry.raster.projection import OrthographicView, orthographic_clip


@dataclasses.dataclass
class UVPlane:
    """UVs seen through an orthographic view.

    ``uv`` [B, H, W, 2] in [0, 1] (0 where uncovered); ``mask`` [B, H, W, 1] bool;
    ``depth`` [B, H, W, 1] view-space depth of the visible surface along the viewing direction
    (for the ``xy`` preset: ``center_z - z_world``), 0 where uncovered.
    """

    uv: Tensor
    mask: Tensor
    depth: Tensor

    def grid(self, flip_v: bool = False) -> Tensor:
        """[B, H, W, 2] sampling grid in [-1, 1] for ``grid_sample(align_corners=False)``."""
        uv = self.uv
        if flip_v:
            uv = torch.stack([uv[..., 0], 1.0 - uv[..., 1]], dim=-1)
        return (uv * 2.0 - 1.0) * self.mask


def render_uv_to_plane(rasterizer: Rasterizer, vertices: Tensor, faces: Tensor, uv_coords: Tensor,
                       uv_faces: Tensor, view: OrthographicView, resolution: tuple[int, int] | int) -> UVPlane:
    """Rasterize ``vertices`` [B, V, 3] (world) with ``faces`` [F, 3] through ``view`` and
    interpolate ``uv_coords`` [T, 2] (indexed by ``uv_faces`` [F, 3]) → :class:`UVPlane`."""
    if uv_coords.ndim != 2 or uv_coords.shape[-1] != 2:
        raise ValueError(f"uv_coords must be [T, 2], got {tuple(uv_coords.shape)}")
    if uv_faces.shape != faces.shape:
        raise ValueError(f"uv_faces {tuple(uv_faces.shape)} must match faces {tuple(faces.shape)} row for row")
    height, width = check_resolution(resolution)
    clip = orthographic_clip(vertices, view)  # [B, V, 4]
    raster = rasterizer.rasterize(clip, faces, (height, width))
    uv = rasterizer.interpolate(uv_coords.to(clip.dtype), raster, uv_faces)  # [B, H, W, 2]
    depth = view.depth_from_ndc(raster.depth_ndc.to(clip.dtype)) * raster.mask  # [B, H, W, 1]
    return UVPlane(uv=uv, mask=raster.mask, depth=depth)


def sample_texture(texture: Tensor, uvplane: UVPlane, *, flip_v: bool = False, mode: str = "bilinear",
                   padding_mode: str = "border") -> Tensor:
    """Resample a UV texture [B or 1, C, Ht, Wt] onto the plane → [B, C, H, W], 0 where uncovered.

    Differentiable with respect to ``texture``.
    """
    if texture.ndim != 4:
        raise ValueError(f"texture must be [B, C, Ht, Wt], got {tuple(texture.shape)}")
    batch = uvplane.uv.shape[0]
    if texture.shape[0] not in (1, batch):
        raise ValueError(f"texture batch {texture.shape[0]} does not match the UV plane batch {batch}")
    texture = texture.expand(batch, -1, -1, -1)
    grid = uvplane.grid(flip_v=flip_v).to(texture.dtype)  # [B, H, W, 2]
    sampled = F.grid_sample(texture, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return sampled * uvplane.mask.permute(0, 3, 1, 2).to(texture.dtype)  # [B, C, H, W]
