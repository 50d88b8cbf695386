"""Triplane axis conventions and feature sampling.

A triplane is a tensor ``[B, 3, C, H, W]``. A world point ``p = (x, y, z)`` is first scaled by
``2 / box_warp`` (so the box ``[-box_warp/2, box_warp/2]^3`` maps to ``[-1, 1]^3``), then each plane
``k`` is read with ``grid_sample(..., mode='bilinear', padding_mode='zeros', align_corners=False)``
at the 2-d coordinate ``(p[a_k], p[b_k])``: the first coordinate is grid_sample's x (the plane's
width axis, W), the second its y (the height axis, H). Points outside the box read zeros.

Conventions (the pairs ``(a_k, b_k)`` for planes 0, 1, 2; axis 0 = x, 1 = y, 2 = z):

``"eg3d"``: (x, y), (x, z), (z, x).
    NVlabs/eg3d ``volumetric_rendering/renderer.py``: ``generate_planes()`` returns the matrices
    M0 = I, M1 = [[1,0,0],[0,0,1],[0,1,0]], M2 = [[0,0,1],[1,0,0],[0,1,0]] and
    ``project_onto_planes`` computes ``p @ inv(M_k)`` (row vector) and keeps the first two values.
    inv(M0) = I gives (x, y); M1 is a self-inverse swap of y and z, giving (x, z); M2 is a cyclic
    permutation whose inverse is its transpose [[0,1,0],[0,0,1],[1,0,0]], so ``p @ inv(M2)`` =
    (z, x, y) and the plane is read at (z, x). The x-z plane is therefore sampled twice (once
    transposed) and the y-z plane never: the known EG3D quirk, kept so released weights work.
``"next3dpp"``: (x, y), (x, z), (z, x) -- identical pairs to ``"eg3d"``.
    XChenZ/invertAvatar (``ani3dgan512.pkl``, our ``paper`` GAN preset): ``generate_planes``
    stores ``inv(M_k)`` of the same EG3D matrices and ``project_onto_planes`` multiplies by the
    stored matrices without inverting again, so the product ``p @ inv(M_k)`` is the same as EG3D's.
``"next3d"``: (x, y), (x, z), (z, y).
    MrTornado24/Next3D (``next3d_ffhq_512.pkl``) ``training_avatar_texture`` renderer changes the
    third matrix to [[0,0,1],[0,1,0],[1,0,0]] (a self-inverse swap of x and z): ``p @ M2`` =
    (z, y, x), so plane 2 is read at (z, y).
``"corrected"``: (x, y), (x, z), (y, z) -- three genuinely orthogonal planes.

A loader can check a pickled ``plane_axes`` attribute with :func:`axis_pairs_from_plane_axes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

AxisPairs = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

PLANE_CONVENTIONS: dict[str, AxisPairs] = {
    "eg3d": ((0, 1), (0, 2), (2, 0)),
    "next3dpp": ((0, 1), (0, 2), (2, 0)),
    "next3d": ((0, 1), (0, 2), (2, 1)),
    "corrected": ((0, 1), (0, 2), (1, 2)),
}


def plane_axis_pairs(convention: str) -> AxisPairs:
    """The (grid x, grid y) world-axis indices of planes 0, 1, 2 under ``convention``."""
    if convention not in PLANE_CONVENTIONS:
        raise ValueError(f"unknown plane convention {convention!r}; choose from {sorted(PLANE_CONVENTIONS)}")
    return PLANE_CONVENTIONS[convention]


def axis_pairs_from_plane_axes(plane_axes: Tensor, *, pre_inverted: bool) -> AxisPairs:
    """Axis pairs implied by an EG3D-style ``plane_axes`` tensor [3, 3, 3].

    ``pre_inverted=False``: EG3D/Next3D store the matrices M_k and project with ``p @ inv(M_k)``;
    ``pre_inverted=True``: InvertAvatar stores ``inv(M_k)`` and projects with ``p @ stored``.
    """
    if plane_axes.shape != (3, 3, 3):
        raise ValueError(f"plane_axes must be [3, 3, 3], got {tuple(plane_axes.shape)}")
    projection = plane_axes.double() if pre_inverted else torch.linalg.inv(plane_axes.double())
    pairs = []
    for matrix in projection:
        columns = matrix[:, :2].abs()  # column j: weight of each world axis in grid coordinate j
        if not torch.allclose(columns.sum(0), torch.ones(2, dtype=columns.dtype)) or columns.max(0).values.min() < 1:
            raise ValueError("plane_axes do not project onto world axes (not a signed permutation)")
        pairs.append((int(columns[:, 0].argmax()), int(columns[:, 1].argmax())))
    return tuple(pairs)  # type: ignore[return-value]


def sample_planes(planes: Tensor, points: Tensor, convention: str, box_warp: float = 1.0) -> Tensor:
    """Bilinear triplane features at world points.

    planes [B, 3, C, H, W], points [B, N, 3] (world units) -> [B, 3, N, C].
    """
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be [B, 3, C, H, W], got {tuple(planes.shape)}")
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != planes.shape[0]:
        raise ValueError(f"points must be [B, N, 3] with B={planes.shape[0]}, got {tuple(points.shape)}")
    if box_warp <= 0:
        raise ValueError(f"box_warp must be positive, got {box_warp}")
    batch, _, channels, height, width = planes.shape
    num_points = points.shape[1]
    axes = torch.tensor(plane_axis_pairs(convention), device=points.device)  # [3, 2]
    scaled = points * (2.0 / box_warp)  # [B, N, 3], box -> [-1, 1]
    grid = scaled[:, :, axes].permute(0, 2, 1, 3)  # [B, N, 3, 2] -> [B, 3, N, 2]
    grid = grid.reshape(batch * 3, 1, num_points, 2).to(planes.dtype)
    features = F.grid_sample(planes.reshape(batch * 3, channels, height, width), grid,
                             mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*3, C, 1, N]
    return features.reshape(batch, 3, channels, num_points).transpose(2, 3)  # [B, 3, N, C]
