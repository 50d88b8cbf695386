"""Camera rays for volume rendering (EG3D's ``RaySampler`` and Next3D++'s ``RaySampler_zxc``).

Pixels are enumerated row-major (``index = row * resolution + col``), row 0 at the top of the
image. A pixel's normalised image coordinate is ``((col + o) / res, (row + o) / res)`` with
``o = 0.5`` for pixel centres (EG3D) or ``o = 0`` for Next3D++'s integer pixel coordinates
(``K_pix^-1 @ (col, row, 1)``); it is lifted through the normalised intrinsics (skew included,
as in EG3D) to an OpenCV camera direction ``(x, y, 1)`` and rotated into the world.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar4d.geometry.camera import Camera


def camera_rays(camera: Camera, resolution: int, pixel_centers: bool = True) -> tuple[Tensor, Tensor]:
    """World-space rays of every pixel: origins [B, H*W, 3] and unit directions [B, H*W, 3]."""
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    cam2world, intrinsics = camera.cam2world, camera.intrinsics
    batch = camera.batch_size
    dtype, device = cam2world.dtype, cam2world.device
    offset = 0.5 if pixel_centers else 0.0
    index = (torch.arange(resolution, dtype=dtype, device=device) + offset) / resolution  # [R]
    rows, cols = torch.meshgrid(index, index, indexing="ij")  # [R, R] each
    u = cols.reshape(1, -1)  # [1, M], normalised image x
    v = rows.reshape(1, -1)  # [1, M], normalised image y (down)

    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]  # [B, 1]
    cx, cy = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    skew = intrinsics[:, 0, 1, None]
    y_cam = (v - cy) / fy  # [B, M]
    x_cam = (u - cx - skew * y_cam) / fx  # [B, M]
    dirs_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)  # [B, M, 3]

    rotation = cam2world[:, :3, :3]  # [B, 3, 3]
    directions = F.normalize(dirs_cam @ rotation.transpose(1, 2), dim=-1)  # [B, M, 3]
    origins = cam2world[:, None, :3, 3].expand(batch, resolution * resolution, 3).contiguous()  # [B, M, 3]
    return origins, directions
