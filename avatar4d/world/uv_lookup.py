"""Where every texel of a head model's UV atlas sits on the head, for painting textures in 3D.

The world paints its UV-space neural texture as a function of surface position (eyes where the
mesh has eyes, hair above the hairline), so it needs, per texel, the neutral head's 3D point. The
mesh is rasterized in UV space (clip position = the UV coordinate) and the vertex positions are
interpolated. Identity blendshapes are linear and barycentric interpolation is linear, so the
identity basis is interpolated the same way once and a given identity's texel positions are
``mean + basis · coefficients`` exactly, with no rasterization per sample.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar4d.geometry.morphable import MorphableModel
from avatar4d.geometry.raster import get_rasterizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class UVLookup:
    """Texel positions of a head's UV atlas at ``resolution``² (rows follow v, columns u).

    ``mean`` [3, R, R]: the neutral mean head's point of each texel; ``basis`` [Ni, 3, R, R]: the
    identity blendshapes there; ``covered`` [1, R, R]: texels inside a UV triangle (the rest take
    their nearest covered neighbour's values).
    """

    mean: Tensor
    basis: Tensor
    covered: Tensor

    def positions(self, identity: Tensor) -> Tensor:
        """identity [B, Ni] → each texel's neutral point of those identities [B, 3, R, R]."""
        offsets = torch.einsum("bi,icrs->bcrs", identity.to(self.basis.dtype), self.basis)
        return self.mean[None] + offsets


def _fill_uncovered(values: Tensor, covered: Tensor, iterations: int = 8) -> Tensor:
    """Grow covered values [C, R, R] into uncovered texels by repeated 3×3 averaging."""
    values, weight = values * covered, covered.float()
    for _ in range(iterations):
        if bool(weight.min() > 0):
            break
        summed = F.avg_pool2d(values[None], 3, 1, 1, count_include_pad=False)[0]
        counts = F.avg_pool2d(weight[None], 3, 1, 1, count_include_pad=False)[0]
        grown = summed / counts.clamp_min(1e-8)
        fresh = (weight == 0) & (counts > 0)
        values = torch.where(fresh, grown, values)
        weight = torch.where(fresh, torch.ones_like(weight), weight)
    return values


@torch.no_grad()
def build_uv_lookup(head: MorphableModel, resolution: int) -> UVLookup:
    """Rasterize ``head``'s UV atlas at ``resolution``² (CPU, float32; once per head and size)."""
    uv = head.uv_coords.detach().float().cpu()  # [T, 2]
    uv_faces = head.uv_faces.detach().long().cpu()
    faces = head.faces.detach().long().cpu()
    params = head.neutral_params(1)
    mean = head.vertices(params.to("cpu"))[0].float() if head.device.type == "cpu" else \
        head.vertices(params)[0].float().cpu()  # [V, 3]
    basis = head.identity_basis.detach().float().cpu()  # [V, 3, Ni]
    # per-UV-vertex attributes: the 3D vertex each UV corner belongs to (faces and uv_faces match row by row)
    vertex_of_uv = torch.zeros(uv.shape[0], dtype=torch.long)
    vertex_of_uv[uv_faces.reshape(-1)] = faces.reshape(-1)
    attributes = torch.cat([mean[vertex_of_uv], basis[vertex_of_uv].reshape(uv.shape[0], -1)], dim=1)

    # clip space from UV: u → x, v → y; the rasterizer's row 0 is clip y = -1, i.e. v = 0 (texture row 0)
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=1)[None]
    rasterizer = get_rasterizer("torch", device="cpu")
    raster = rasterizer.rasterize(clip, uv_faces, (resolution, resolution))
    values = rasterizer.interpolate(attributes, raster, uv_faces)[0].permute(2, 0, 1)  # [3 + 3Ni, R, R]
    covered = raster.mask[0].permute(2, 0, 1)  # [1, R, R]
    texel_uv = rasterizer.interpolate(uv, raster, uv_faces)[0]  # [R, R, 2], to check the orientation
    centres = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    inside = covered[0]
    row_v = centres[:, None].expand(-1, resolution)
    if inside.any() and (texel_uv[..., 1][inside] - row_v[inside]).abs().mean() > 0.5 / resolution:
        values, covered = values.flip(-2), covered.flip(-2)  # this rasterizer puts v = 0 at the last row
    values = _fill_uncovered(values, covered)
    num_identity = basis.shape[-1]
    logger.debug("UV lookup %d²: %.1f %% of texels covered", resolution, 100 * covered.float().mean().item())
    return UVLookup(mean=values[:3].contiguous(),
                    basis=values[3:].reshape(3, num_identity, resolution, resolution).transpose(0, 1).contiguous(),
                    covered=covered)
