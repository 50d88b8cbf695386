"""Pure-PyTorch reference rasterizer (CPU or CUDA), vectorised over triangles and pixels.

Algorithm (homogeneous 2D rasterization, Olano & Greer 1997):

1. Triangle setup (float64, per triangle): with ``M = [[x0 x1 x2], [y0 y1 y2], [w0 w1 w2]]`` the
   clip-space columns, ``k = M^-1 (px, py, 1)`` gives, for an NDC pixel centre ``(px, py)``,
   barycentrics scaled by ``1 / w``: the pixel is inside and in front of the eye iff every
   ``k_i >= 0`` and ``s = k0 + k1 + k2 > 0``; ``(k0, k1) / s`` are the perspective-correct
   barycentrics and ``sum(k_i z_i) = z / w``. Each ``k_i`` is affine in ``(px, py)``, so a
   triangle is 12 coefficients (3 edge functions + depth) plus a 1e-3-pixel edge tolerance that
   makes shared edges watertight under float rounding.
2. Culling: triangles entirely outside one clip plane, entirely behind the eye, degenerate
   (``det M == 0``: zero area or seen edge-on) or with an empty pixel bounding box are dropped.
3. Candidates: triangles are grouped by the size of their pixel bounding box, rounded up to
   powers of two (a triangle with a vertex behind the eye gets the whole screen), and each group is
   evaluated as a dense ``[G, h, w]`` tile of pixel centres by broadcasting (no per-pixel gathers),
   in chunks of at most ``max_fragments_per_chunk`` candidates; inside, in-front and depth-range
   tests keep fragments.
4. Z-buffer: ``scatter_reduce(amin)`` of ``z / w`` per pixel, then of the triangle index among
   the fragments at that depth (deterministic ties), then barycentrics of the winners.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from avatar4d.geometry.raster.base import (
    Rasterizer,
    RasterizerConfig,
    RasterOutput,
    check_clip_pos,
    check_faces,
    check_resolution,
)

logger = logging.getLogger(__name__)

EDGE_TOLERANCE_PX = 1e-3  # a pixel centre this close outside an edge still counts as inside


def _triangle_setup(x: Tensor, y: Tensor, z: Tensor, w: Tensor, height: int,
                    width: int) -> tuple[Tensor, Tensor]:
    """Clip-space corner components, each [G, 3] → (coefficients [G, 15], usable [G] bool).

    Coefficient layout: rows (k0, k1, k2, z/w) × (a_px, a_py, const) flattened, then the three
    edge tolerances (in k units). Row i of ``M^-1`` is ``(c_{i+1} × c_{i+2}) / det`` with
    ``c_i = (x_i, y_i, w_i)``.
    """
    nxt, prv = [1, 2, 0], [2, 0, 1]
    x1, y1, w1, x2, y2, w2 = x[:, nxt], y[:, nxt], w[:, nxt], x[:, prv], y[:, prv], w[:, prv]
    a = y1 * w2 - w1 * y2  # [G, 3] px coefficient of det * k_i
    b = w1 * x2 - x1 * w2  # py coefficient
    c = x1 * y2 - y1 * x2  # constant
    det = x[:, 0] * a[:, 0] + y[:, 0] * b[:, 0] + w[:, 0] * c[:, 0]  # [G]
    usable = torch.isfinite(det) & (det.abs() > 1e-30)
    inv_det = 1.0 / torch.where(usable, det, torch.ones_like(det))[:, None]
    a, b, c = a * inv_det, b * inv_det, c * inv_det
    depth = torch.stack([(a * z).sum(dim=1), (b * z).sum(dim=1), (c * z).sum(dim=1)], dim=1)  # [G, 3]
    # Edge tolerance: EDGE_TOLERANCE_PX pixels of the edge function's screen-space gradient.
    tolerance = EDGE_TOLERANCE_PX * torch.sqrt((a * (2.0 / width)) ** 2 + (b * (2.0 / height)) ** 2)
    coeffs = torch.cat([torch.stack([a, b, c], dim=2).reshape(-1, 9), depth, tolerance], dim=1)  # [G, 15]
    usable &= torch.isfinite(coeffs).all(dim=1)
    return coeffs, usable


def _outside_clip_volume(x: Tensor, y: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """Corner components [G, 3] → [G] bool: all corners beyond one clip plane, or all behind the eye."""
    out = (x > w).all(dim=1) | (x < -w).all(dim=1) | (y > w).all(dim=1) | (y < -w).all(dim=1)
    return out | (z > w).all(dim=1) | (z < -w).all(dim=1) | (w <= 0).all(dim=1)


def _pixel_bounds(x: Tensor, y: Tensor, w: Tensor, height: int,
                  width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel bounding boxes (row_lo, row_hi, col_lo, col_hi) [G] long from corners [G, 3]."""
    in_front = (w > 0).all(dim=1, keepdim=True)  # [G, 1]; otherwise the box is the whole screen
    safe_w = torch.where(in_front, w, torch.ones_like(w))
    slack = 1e-2  # pixels: the exact inside test runs on every candidate, so be generous here

    def bounds(ndc: Tensor, size: int) -> tuple[Tensor, Tensor]:
        lo = torch.where(in_front[:, 0], ndc.amin(dim=1), -1.0).clamp(-1.0, 1.0)
        hi = torch.where(in_front[:, 0], ndc.amax(dim=1), 1.0).clamp(-1.0, 1.0)
        first = torch.ceil((lo + 1.0) * 0.5 * size - 0.5 - slack).long().clamp(min=0)
        last = torch.floor((hi + 1.0) * 0.5 * size - 0.5 + slack).long().clamp(max=size - 1)
        return first, last

    row_lo, row_hi = bounds(y / safe_w, height)
    col_lo, col_hi = bounds(x / safe_w, width)
    return row_lo, row_hi, col_lo, col_hi


def _next_pow2(n: Tensor) -> Tensor:
    """Smallest power of two >= n (n >= 1), elementwise."""
    return torch.pow(2, torch.ceil(torch.log2(n.double())).long())


class TorchRasterizer(Rasterizer):
    """Reference rasterizer in plain PyTorch; works on any device; ``rast`` carries no gradient."""

    name = "torch"

    def __init__(self, config: RasterizerConfig | None = None) -> None:
        self.config = config or RasterizerConfig(backend="torch")

    def rasterize(self, clip_pos: Tensor, faces: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        check_clip_pos(clip_pos)
        height, width = check_resolution(resolution)
        batch, num_vertices, _ = clip_pos.shape
        check_faces(faces, num_vertices)
        num_faces = faces.shape[0]
        device = clip_pos.device
        with torch.no_grad():
            pos = clip_pos.detach().to(torch.float64)
            corners = pos[:, faces.to(device=device, dtype=torch.long)].reshape(-1, 3, 4)  # [B*F, 3, 4]
            x, y, z, w = corners.permute(2, 0, 1).contiguous()  # each [G, 3], G = B*F
            coeffs, usable = _triangle_setup(x, y, z, w, height, width)
            row_lo, row_hi, col_lo, col_hi = _pixel_bounds(x, y, w, height, width)
            box_h, box_w = row_hi - row_lo + 1, col_hi - col_lo + 1  # [G]
            keep = usable & ~_outside_clip_volume(x, y, z, w) & (box_h > 0) & (box_w > 0)
            behind = (w <= 0).any(dim=1)  # [G] a corner behind the eye: test 1/w > 0 too
            coeffs = coeffs.float()
            frag_pix, frag_tri, frag_depth = self._fragments(
                coeffs, keep, behind, row_lo, col_lo, box_h, box_w, num_faces, height, width)
            return self._resolve(coeffs, frag_pix, frag_tri, frag_depth, batch, num_faces, height, width)

    # ---------------------------------------------------------------------------------------
    def _fragments(self, coeffs: Tensor, keep: Tensor, behind: Tensor, row_lo: Tensor, col_lo: Tensor,
                   box_h: Tensor, box_w: Tensor, num_faces: int, height: int,
                   width: int) -> tuple[Tensor, Tensor, Tensor]:
        """All covered (pixel, triangle) pairs: flat pixel index [N] (b*H*W + i*W + j), global
        triangle index [N] (b*F + f), z/w [N]."""
        device = coeffs.device
        kept = keep.nonzero(as_tuple=True)[0]  # [G']
        tile_h = torch.clamp(_next_pow2(box_h[kept]), max=height)  # [G']
        tile_w = torch.clamp(_next_pow2(box_w[kept]), max=width)
        # Shift tiles that would stick out of the image back inside (extra pixels fail the tests).
        tile_row = torch.minimum(row_lo[kept], height - tile_h)
        tile_col = torch.minimum(col_lo[kept], width - tile_w)
        group = tile_h * (2 * width + 1) + tile_w
        out_pix, out_tri, out_depth = [], [], []
        budget = self.config.max_fragments_per_chunk
        for key in torch.unique(group).tolist():
            members = (group == key).nonzero(as_tuple=True)[0]
            th, tw = int(tile_h[members[0]]), int(tile_w[members[0]])
            band = max(1, min(th, budget // tw))  # rows per pass, for tiles larger than the budget
            per_chunk = max(1, budget // (band * tw))
            for first in range(0, members.numel(), per_chunk):
                sel = members[first:first + per_chunk]
                for row0 in range(0, th, band):
                    rows = min(band, th - row0)
                    pix, g, depth = self._tile_fragments(
                        coeffs, kept[sel], behind, tile_row[sel] + row0, tile_col[sel], rows, tw,
                        num_faces, height, width)
                    out_pix.append(pix)
                    out_tri.append(g)
                    out_depth.append(depth)
        if not out_pix:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, torch.zeros(0, dtype=coeffs.dtype, device=device)
        return torch.cat(out_pix), torch.cat(out_tri), torch.cat(out_depth)

    @staticmethod
    def _tile_fragments(coeffs: Tensor, g: Tensor, behind: Tensor, row0: Tensor, col0: Tensor, rows: int,
                        cols: int, num_faces: int, height: int,
                        width: int) -> tuple[Tensor, Tensor, Tensor]:
        """Test a ``rows x cols`` tile of pixels at (row0, col0) [G] against triangles g [G]."""
        c = coeffs[g]  # [G, 15]
        dev = coeffs.device
        px = (col0[:, None] + torch.arange(cols, device=dev) + 0.5).float() * (2.0 / width) - 1.0  # [G, w]
        py = (row0[:, None] + torch.arange(rows, device=dev) + 0.5).float() * (2.0 / height) - 1.0  # [G, h]

        def affine(i: int, slack: Tensor | float = 0.0) -> Tensor:  # row i of k at every pixel → [G, h, w]
            row_part = c[:, 3 * i + 1, None] * py + (c[:, 3 * i + 2, None] + slack)  # [G, h]
            return c[:, 3 * i, None, None] * px[:, None, :] + row_part[:, :, None]

        inside = affine(0, c[:, 12, None]) >= 0  # edge tests with the watertight tolerance
        inside &= affine(1, c[:, 13, None]) >= 0
        inside &= affine(2, c[:, 14, None]) >= 0
        depth = affine(3)  # z / w
        inside &= (depth >= -1.0) & (depth <= 1.0)
        if bool(behind[g].any()):  # only triangles reaching behind the eye need 1/w > 0
            inside &= (affine(0) + affine(1) + affine(2)) > 0
        tri_local, dy, dx = inside.nonzero(as_tuple=True)  # [N] each
        g_sel = g[tri_local]
        batch_idx = torch.div(g_sel, num_faces, rounding_mode="floor")
        pix = (batch_idx * height + row0[tri_local] + dy) * width + col0[tri_local] + dx
        return pix, g_sel, depth[inside]

    @staticmethod
    def _resolve(coeffs: Tensor, pix: Tensor, tri: Tensor, depth: Tensor, batch: int, num_faces: int,
                 height: int, width: int) -> RasterOutput:
        """Z-buffer the fragments and build the nvdiffrast-layout output."""
        device = coeffs.device
        num_pix = batch * height * width
        zbuf = torch.full((num_pix,), float("inf"), dtype=depth.dtype, device=device)
        zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
        front = depth == zbuf[pix]
        pix, tri = pix[front], tri[front]
        tbuf = torch.full((num_pix,), torch.iinfo(torch.long).max, dtype=torch.long, device=device)
        tbuf.scatter_reduce_(0, pix, tri, reduce="amin")
        win = tri == tbuf[pix]
        pix, tri = pix[win], tri[win]  # one fragment per covered pixel
        col = pix % width
        row = torch.div(pix, width, rounding_mode="floor") % height
        px = (col.to(coeffs.dtype) + 0.5) * (2.0 / width) - 1.0
        py = (row.to(coeffs.dtype) + 0.5) * (2.0 / height) - 1.0
        c = coeffs[tri]
        k = c[:, 0:12:3] * px[:, None] + c[:, 1:12:3] * py[:, None] + c[:, 2:12:3]  # [N, 4]
        s = k[:, :3].sum(dim=1)
        face = tri % num_faces
        rast = torch.zeros(num_pix, 4, dtype=torch.float32, device=device)
        rast[pix] = torch.stack([k[:, 0] / s, k[:, 1] / s, k[:, 3], (face + 1).to(coeffs.dtype)], dim=1)
        triangle_id = torch.full((num_pix,), -1, dtype=torch.long, device=device)
        triangle_id[pix] = face
        triangle_id = triangle_id.reshape(batch, height, width)
        return RasterOutput(rast=rast.reshape(batch, height, width, 4), mask=(triangle_id >= 0)[..., None],
                            triangle_id=triangle_id, num_triangles=num_faces)

    def __repr__(self) -> str:
        return f"TorchRasterizer(max_fragments_per_chunk={self.config.max_fragments_per_chunk})"
