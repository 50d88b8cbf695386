"""Differentiable head-tracking cameras in the convention of :func:`avatar4d.geometry.camera.orbit_camera`.

A tracked camera is an orbit camera (yaw, pitch, roll on the sampler's orbit, looking at the pivot)
followed by a translation ``t`` in the camera frame: ``world2cam = T(t) · world2cam_orbit``. A
world render made with ``orbit_camera(yaw, pitch, roll)`` is reproduced with ``t = 0``, so fitted
angles compare directly with the ground truth. Radius, pivot and field of view are read from
:class:`~avatar4d.geometry.camera.PoseSamplerConfig` (the project's camera framing), never
hard-coded here.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from avatar4d.geometry.camera import Camera, PoseSamplerConfig, orbit_camera


@dataclasses.dataclass
class CameraFraming:
    """Orbit radius, pivot and field of view of the cameras being fitted (the world's framing)."""

    radius: float
    pivot: tuple[float, float, float]
    fov_degrees: float

    @classmethod
    def default(cls) -> CameraFraming:
        config = PoseSamplerConfig()
        return cls(radius=config.radius, pivot=tuple(config.pivot), fov_degrees=config.fov_degrees)


@dataclasses.dataclass
class HeadPose:
    """Per-frame camera parameters: yaw, pitch, roll [N] (radians) and translation [N, 3] (camera frame)."""

    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    translation: Tensor

    def angles(self) -> Tensor:
        """[N, 3] yaw, pitch, roll."""
        return torch.stack([self.yaw, self.pitch, self.roll], dim=-1)

    def detach(self) -> HeadPose:
        return HeadPose(*(t.detach() for t in (self.yaw, self.pitch, self.roll, self.translation)))


def pose_camera(pose: HeadPose, framing: CameraFraming) -> Camera:
    """Cameras [N] of ``pose`` (differentiable in every pose tensor)."""
    orbit = orbit_camera(pose.yaw, pose.pitch, pose.roll, radius=framing.radius, pivot=framing.pivot,
                         fov_degrees=framing.fov_degrees)
    shift = torch.eye(4, dtype=pose.translation.dtype, device=pose.translation.device)
    shift = shift.expand(pose.translation.shape[0], 4, 4).clone()  # [N, 4, 4]
    shift[:, :3, 3] = -pose.translation  # cam2world · T(−t) = (T(t) · world2cam)⁻¹
    cam2world = orbit.cam2world.to(pose.translation) @ shift
    return Camera(cam2world=cam2world, intrinsics=orbit.intrinsics.to(pose.translation))
