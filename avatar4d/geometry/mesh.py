"""Small mesh utilities shared by the rasterizer, the morphable models and previews."""

from __future__ import annotations

import torch
from torch import Tensor


def face_normals(vertices: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """[B, V, 3] vertices, [F, 3] faces → [B, F, 3] normals ((v1 - v0) × (v2 - v0), area-weighted
    when ``normalize`` is False)."""
    v0, v1, v2 = (vertices[:, faces[:, i]] for i in range(3))
    normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    return torch.nn.functional.normalize(normals, dim=-1) if normalize else normals


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[B, V, 3] unit vertex normals: area-weighted sums of the adjacent face normals."""
    weighted = face_normals(vertices, faces, normalize=False)  # [B, F, 3]
    normals = torch.zeros_like(vertices)
    for corner in range(3):
        normals.index_add_(1, faces[:, corner], weighted)
    return torch.nn.functional.normalize(normals, dim=-1)
