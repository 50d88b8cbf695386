"""Cameras for rendering avatars: one fixed view, a turntable, or explicit yaw/pitch lists.

Angles are in degrees at the user's edge (``--camera 20,5``, the HTTP API) and radians inside, in
the convention of :func:`avatar4d.geometry.camera.orbit_camera` (yaw turns the camera to the head's
left for positive values, pitch raises it; 2.7 from the world origin, looking at the pivot (0, 0, 0.2),
as EG3D's ``LookAtPoseSampler``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera, orbit_camera

MAX_YAW_DEGREES = 90.0
MAX_PITCH_DEGREES = 60.0
TURNTABLE_YAW_DEGREES = 40.0  # the triplanes are trained on the FFHQ pose range (±45° yaw)


def check_angles(yaws: Sequence[float], pitches: Sequence[float]) -> None:
    """Finite angles within the ranges the models saw (degrees), else a one-line :class:`UserError`."""
    if len(yaws) != len(pitches):
        raise UserError(f"{len(yaws)} yaws but {len(pitches)} pitches")
    for name, values, limit in (("yaw", yaws, MAX_YAW_DEGREES), ("pitch", pitches, MAX_PITCH_DEGREES)):
        for value in values:
            if not math.isfinite(value):
                raise UserError(f"camera {name} must be a finite number of degrees, got {value}")
            if abs(value) > limit:
                raise UserError(f"camera {name} {value}° is outside [-{limit:g}°, {limit:g}°]")


def parse_camera(text: str) -> tuple[float, float]:
    """``"yaw,pitch"`` in degrees → (yaw, pitch); a one-line error for anything else."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        yaw, pitch = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"--camera takes YAW,PITCH in degrees (e.g. 20,5), got {text!r}") from None
    check_angles([yaw], [pitch])
    return yaw, pitch


def cameras_from_degrees(yaws: Sequence[float], pitches: Sequence[float]) -> Camera:
    check_angles(yaws, pitches)
    return orbit_camera(torch.tensor(yaws, dtype=torch.float32).deg2rad(),
                        torch.tensor(pitches, dtype=torch.float32).deg2rad())


def turntable_degrees(frames: int, *, amplitude: float = TURNTABLE_YAW_DEGREES,
                      pitch: float = 5.0) -> tuple[list[float], list[float]]:
    """A seamless loop: yaw = amplitude·sin(2π k / frames), constant pitch (degrees)."""
    if frames < 1:
        raise UserError(f"a turntable needs at least 1 frame, got {frames}")
    yaws = [amplitude * math.sin(2 * math.pi * k / frames) for k in range(frames)]
    return yaws, [pitch] * frames


def turntable(frames: int, *, amplitude: float = TURNTABLE_YAW_DEGREES, pitch: float = 5.0) -> Camera:
    return cameras_from_degrees(*turntable_degrees(frames, amplitude=amplitude, pitch=pitch))


def repeat_camera(camera: Camera, frames: int) -> Camera:
    """One camera [1] repeated for every frame [frames]."""
    return Camera(camera.cam2world[:1].expand(frames, 4, 4).clone(), camera.intrinsics[:1].expand(frames, 3, 3).clone())
