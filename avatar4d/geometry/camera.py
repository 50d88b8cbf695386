"""Cameras in the EG3D/Next3D convention.

World frame: the head looks along +z, y is up, the look-at pivot is (0, 0, 0.2).
Camera frame: OpenCV (x right, y down, z forward). ``cam2world`` maps camera to world
coordinates. Intrinsics are *normalised*: focal lengths and principal point are in units of the
image size, so the same camera serves any resolution (``fx ≈ 4.2634`` for an 18.837° FOV, the
FFHQ dataset labels store 4.2647; ``cx = cy = 0.5``).

The 25-d label that EG3D networks are conditioned on is ``cam2world.flatten() (16) ++
intrinsics.flatten() (9)``; :meth:`Camera.to_label` and :meth:`Camera.from_label` are the only
places that slice it.

Pose angles (radians), used by :func:`orbit_camera` and :class:`PoseSampler`:
- yaw: azimuth around the world y axis through the orbit centre; yaw > 0 moves the camera towards +x.
- pitch: elevation; pitch > 0 puts the camera above the centre, looking down.
- roll: rotation of the camera about its own viewing axis.

Where the camera sits: EG3D's ``LookAtPoseSampler`` (and so every released EG3D/Next3D label)
puts the camera ``radius`` = 2.7 from the *world origin* and points it at the pivot (0, 0, 0.2):
the frontal camera is at (0, 0, 2.7), 2.5 from the pivot. That is the default here
(``orbit_center=ORIGIN``); ``orbit_center=pivot`` orbits the pivot itself (our behaviour before
issue 9, 2.7 from the pivot), kept selectable for comparisons.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from avatar4d.config import Config

LABEL_DIM = 25
DEFAULT_FOV_DEGREES = 18.837
DEFAULT_RADIUS = 2.7
DEFAULT_PIVOT = (0.0, 0.0, 0.2)
ORIGIN = (0.0, 0.0, 0.0)
DEFAULT_ORBIT_CENTER = ORIGIN
"""EG3D's ``LookAtPoseSampler``: ``camera_origins = radius · (sin φ cos(π−θ), cos φ, sin φ sin(π−θ))``
around (0, 0, 0), ``forward = normalize(lookat_position − camera_origins)``."""


def fov_to_intrinsics(fov_degrees: float = DEFAULT_FOV_DEGREES, *, dtype=torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Normalised 3×3 intrinsics of a square pinhole camera with the given field of view.

    EG3D's definition: ``f = 1 / (tan(fov / 2) * 1.414)`` (the 1.414 is EG3D's; the diagonal FOV
    of the 512² FFHQ crops), principal point at the image centre.
    """
    if not 0.0 < fov_degrees < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_degrees}")
    focal = 1.0 / (math.tan(fov_degrees * math.pi / 360.0) * 1.414)
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]],
                        dtype=dtype, device=device)


def look_at(eye: Tensor, target: Tensor, up: Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """OpenCV cam2world matrices [B, 4, 4] of cameras at ``eye`` [B, 3] looking at ``target``.

    The camera's +z axis points at the target and its +y axis points away from the world ``up``
    (image rows go down), as in EG3D's ``create_cam2world_matrix``.
    """
    eye, target = torch.broadcast_tensors(eye, target)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # [B, 3]
    up_vec = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up_vec, dim=-1), dim=-1)
    if torch.any(torch.linalg.vector_norm(torch.linalg.cross(forward, up_vec, dim=-1), dim=-1) < 1e-8):
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    down = torch.linalg.cross(forward, right, dim=-1)  # camera +y (image down)
    cam2world = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(*eye.shape[:-1], 1, 1)
    cam2world[..., :3, 0] = right
    cam2world[..., :3, 1] = down
    cam2world[..., :3, 2] = forward
    cam2world[..., :3, 3] = eye
    return cam2world


def _roll_matrix(roll: Tensor) -> Tensor:
    """[B, 4, 4] rotation about the camera's z axis (applied in the camera frame)."""
    c, s = torch.cos(roll), torch.sin(roll)
    m = torch.eye(4, dtype=roll.dtype, device=roll.device).repeat(roll.shape[0], 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def orbit_camera(yaw: Tensor | float, pitch: Tensor | float, roll: Tensor | float = 0.0, *,
                 radius: Tensor | float = DEFAULT_RADIUS,
                 pivot: Sequence[float] = DEFAULT_PIVOT,
                 fov_degrees: float = DEFAULT_FOV_DEGREES,
                 orbit_center: Sequence[float] = DEFAULT_ORBIT_CENTER) -> Camera:
    """Cameras on a sphere of ``radius`` around ``orbit_center`` (EG3D: the world origin) looking at
    ``pivot``, from yaw/pitch/roll in radians."""
    yaw_t, pitch_t, roll_t, radius_t = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (yaw, pitch, roll, radius)))
    pivot_t = torch.tensor(pivot, dtype=torch.float32).expand(yaw_t.shape[0], 3)
    center_t = torch.tensor(orbit_center, dtype=torch.float32).expand(yaw_t.shape[0], 3)
    offset = torch.stack([torch.cos(pitch_t) * torch.sin(yaw_t), torch.sin(pitch_t),
                          torch.cos(pitch_t) * torch.cos(yaw_t)], dim=-1)
    eye = center_t + radius_t[:, None] * offset  # [B, 3]
    cam2world = look_at(eye, pivot_t) @ _roll_matrix(roll_t)
    intrinsics = fov_to_intrinsics(fov_degrees).expand(yaw_t.shape[0], 3, 3).clone()
    return Camera(cam2world=cam2world, intrinsics=intrinsics)


@dataclasses.dataclass
class Camera:
    """A batch of pinhole cameras: ``cam2world`` [B, 4, 4] (OpenCV) and normalised ``intrinsics``
    [B, 3, 3]."""

    cam2world: Tensor
    intrinsics: Tensor

    def __post_init__(self) -> None:
        if self.cam2world.ndim == 2:
            self.cam2world = self.cam2world[None]
        if self.intrinsics.ndim == 2:
            self.intrinsics = self.intrinsics[None].expand(self.cam2world.shape[0], 3, 3)
        if self.cam2world.shape[-2:] != (4, 4) or self.intrinsics.shape[-2:] != (3, 3):
            raise ValueError(f"Camera needs cam2world [B,4,4] and intrinsics [B,3,3], got "
                             f"{tuple(self.cam2world.shape)} and {tuple(self.intrinsics.shape)}")
        if self.cam2world.shape[0] != self.intrinsics.shape[0]:
            raise ValueError(f"batch mismatch: {self.cam2world.shape[0]} poses, "
                             f"{self.intrinsics.shape[0]} intrinsics")

    # --- the 25-d EG3D label ---------------------------------------------------------------
    def to_label(self) -> Tensor:
        """[B, 25]: cam2world flattened row-major (16) followed by intrinsics (9)."""
        b = self.batch_size
        return torch.cat([self.cam2world.reshape(b, 16), self.intrinsics.reshape(b, 9)], dim=-1)

    @classmethod
    def from_label(cls, label: Tensor) -> Camera:
        """Inverse of :meth:`to_label`; accepts [25] or [B, 25] (extra leading columns, such as
        Next3D's conditioning prefix, are not accepted: pass the last 25)."""
        if label.ndim == 1:
            label = label[None]
        if label.shape[-1] != LABEL_DIM:
            raise ValueError(f"a camera label has {LABEL_DIM} values, got {label.shape[-1]}")
        return cls(cam2world=label[:, :16].reshape(-1, 4, 4),
                   intrinsics=label[:, 16:].reshape(-1, 3, 3))

    # --- batching and devices -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.cam2world.shape[0]

    @property
    def device(self) -> torch.device:
        return self.cam2world.device

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index) -> Camera:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Camera(self.cam2world[index], self.intrinsics[index])

    def to(self, *args, **kwargs) -> Camera:
        return Camera(self.cam2world.to(*args, **kwargs), self.intrinsics.to(*args, **kwargs))

    @staticmethod
    def cat(cameras: Sequence[Camera]) -> Camera:
        return Camera(torch.cat([c.cam2world for c in cameras]),
                      torch.cat([c.intrinsics for c in cameras]))

    # --- geometry -------------------------------------------------------------------------
    @property
    def origin(self) -> Tensor:
        """[B, 3] camera centres in world coordinates."""
        return self.cam2world[:, :3, 3]

    @property
    def forward(self) -> Tensor:
        """[B, 3] unit viewing directions (camera +z) in world coordinates."""
        return self.cam2world[:, :3, 2]

    def world2cam(self) -> Tensor:
        """[B, 4, 4] inverse of ``cam2world`` (rigid inverse, exact for rotations)."""
        rot = self.cam2world[:, :3, :3]
        out = torch.eye(4, dtype=rot.dtype, device=rot.device).repeat(self.batch_size, 1, 1)
        out[:, :3, :3] = rot.transpose(1, 2)
        out[:, :3, 3] = -(rot.transpose(1, 2) @ self.cam2world[:, :3, 3:4])[..., 0]
        return out

    def pixel_intrinsics(self, resolution: int) -> Tensor:
        """[B, 3, 3] intrinsics in pixels for a square image of ``resolution``."""
        scale = torch.tensor([resolution, resolution, 1.0], dtype=self.intrinsics.dtype,
                             device=self.intrinsics.device)
        return self.intrinsics * scale[None, :, None]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points [B, N, 3] → (normalised image coords [B, N, 2] in [0, 1] across the
        image, camera-space depth [B, N])."""
        homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # [B, N, 4]
        cam = (homo @ self.world2cam().transpose(1, 2))[..., :3]  # [B, N, 3]
        depth = cam[..., 2]
        uvw = cam @ self.intrinsics.transpose(1, 2)  # [B, N, 3]
        return uvw[..., :2] / uvw[..., 2:3], depth


@dataclasses.dataclass
class PoseSamplerConfig(Config):
    """Ranges of the camera pose distribution (radians) and the orbit (``radius`` around
    ``orbit_center``, looking at ``pivot``; EG3D: 2.7 around the world origin).

    ``distribution="gaussian"`` draws yaw/pitch from normals with the given std (clamped to the
    ranges), which approximates FFHQ's frontal-heavy pose distribution (EG3D: std 0.3 / 0.155);
    ``"uniform"`` draws uniformly inside the ranges. Defaults are the paper's VAE ranges.
    """

    yaw_range: tuple[float, float] = (-0.78, 0.78)
    pitch_range: tuple[float, float] = (-0.25, 0.65)
    roll_range: tuple[float, float] = (-0.25, 0.25)
    radius: float = DEFAULT_RADIUS
    radius_jitter: float = 0.0
    pivot: tuple[float, float, float] = DEFAULT_PIVOT
    fov_degrees: float = DEFAULT_FOV_DEGREES
    orbit_center: tuple[float, float, float] = DEFAULT_ORBIT_CENTER
    distribution: str = "uniform"
    yaw_std: float = 0.3
    pitch_std: float = 0.155
    roll_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("yaw_range", "pitch_range", "roll_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low {low} > high {high}")
        if self.distribution not in ("uniform", "gaussian"):
            raise ValueError(f"distribution must be 'uniform' or 'gaussian', got {self.distribution!r}")
        if self.radius <= 0 or self.radius_jitter < 0 or self.radius_jitter >= self.radius:
            raise ValueError("radius must be > 0 and 0 <= radius_jitter < radius")


@dataclasses.dataclass
class PoseSample:
    """Sampled angles and the cameras built from them."""

    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    radius: Tensor
    camera: Camera


class PoseSampler:
    """Seeded, deterministic camera-pose sampler: the same seed gives the same cameras on any
    machine (draws on a CPU generator)."""

    def __init__(self, config: PoseSamplerConfig | None = None) -> None:
        self.config = config or PoseSamplerConfig()

    def _draw(self, n: int, gen: torch.Generator, bounds: tuple[float, float], std: float) -> Tensor:
        low, high = bounds
        if self.config.distribution == "gaussian" and std > 0:
            centre = min(max(0.0, low), high)
            return (centre + std * torch.randn(n, generator=gen)).clamp(low, high)
        return low + (high - low) * torch.rand(n, generator=gen)

    def sample(self, n: int, seed: int | torch.Generator) -> PoseSample:
        if n <= 0:
            raise ValueError(f"number of poses must be positive, got {n}")
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        cfg = self.config
        yaw = self._draw(n, gen, cfg.yaw_range, cfg.yaw_std)
        pitch = self._draw(n, gen, cfg.pitch_range, cfg.pitch_std)
        roll = self._draw(n, gen, cfg.roll_range, cfg.roll_std)
        radius = cfg.radius + cfg.radius_jitter * (2 * torch.rand(n, generator=gen) - 1)
        camera = orbit_camera(yaw, pitch, roll, radius=radius, pivot=cfg.pivot,
                              fov_degrees=cfg.fov_degrees, orbit_center=cfg.orbit_center)
        return PoseSample(yaw=yaw, pitch=pitch, roll=roll, radius=radius, camera=camera)

    def frontal(self, n: int = 1) -> Camera:
        """``n`` copies of the canonical frontal camera (yaw = pitch = roll = 0)."""
        zeros = torch.zeros(n)
        return orbit_camera(zeros, zeros, zeros, radius=self.config.radius, pivot=self.config.pivot,
                            fov_degrees=self.config.fov_degrees, orbit_center=self.config.orbit_center)
