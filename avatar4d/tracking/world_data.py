"""Procedural-world renders with exact landmarks: training data for the regressor, ground truth for
tests and benchmarks.

Every frame is a world render (:class:`~avatar4d.world.ProceduralWorldGenerator`) of a latent's
head with an expression, seen by an orbit camera in the paper's ranges
(:class:`~avatar4d.geometry.camera.PoseSampler` defaults: yaw ±0.78, pitch −0.25…0.65, roll ±0.25
rad); its landmarks are the head model's 3D landmarks projected by the same camera.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from avatar4d.geometry.camera import Camera, PoseSampler, PoseSamplerConfig, orbit_camera
from avatar4d.geometry.morphable import FaceParams, MorphableModel, default_head_model
from avatar4d.tracking.fitting import project_landmarks

DEFAULT_DOMAINS = ("realistic", "pixar", "greek_statue", "zombie", "stained_glass", "anime")


@dataclasses.dataclass
class WorldFrames:
    """images [N, 3, S, S] in [0, 1]; landmarks [N, 68, 2] normalised; yaw/pitch/roll [N]; params; cameras."""

    images: Tensor
    landmarks: Tensor
    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    params: FaceParams
    camera: Camera


def world_generator(domain: str, preset: str = "tiny", head: MorphableModel | None = None):
    from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, style_for_domain

    config = WORLD_PRESETS.get(preset, style=style_for_domain(domain))
    return ProceduralWorldGenerator(config, head or default_head_model()).eval()


@torch.no_grad()
def render_frames(generator, z: Tensor, params: FaceParams, camera: Camera, psi: float | Tensor,
                  chunk: int = 16) -> tuple[Tensor, Tensor]:
    """Render latents ``z`` [N, L] with expression ``params`` (identity from the latents) → (images [N, 3, S, S]
    in [0, 1], landmarks [N, 68, 2])."""
    head = generator.head
    psi_t = torch.as_tensor(psi, dtype=z.dtype).expand(z.shape[0])[:, None]
    ws = generator.mapping(z * psi_t)  # truncation per frame: w = ψ·z
    identity = ws[:, 0, :head.identity_dim]
    params = FaceParams(identity, params.expression, params.jaw)
    vertices = head.vertices(params)
    images = []
    for start in range(0, z.shape[0], chunk):
        part = slice(start, start + chunk)
        out = generator.synthesis(ws[part], camera[part], vertices[part])
        images.append((out.image.clamp(-1, 1) + 1) / 2)
    landmarks = project_landmarks(head, params, camera)
    return torch.cat(images), landmarks


def random_world_frames(count: int, seed: int, domains: Sequence[str] = DEFAULT_DOMAINS, *, preset: str = "tiny",
                        expression_scale: float = 0.5, jaw_max: float = 0.3,
                        psi_range: tuple[float, float] = (0.5, 1.0)) -> WorldFrames:
    """``count`` independent frames: random latents, expressions, cameras and domains (round robin)."""
    gen = torch.Generator().manual_seed(seed)
    head = default_head_model()
    pose = PoseSampler().sample(count, gen)
    frames = []
    for index, domain in enumerate(domains):
        rows = torch.arange(index, count, len(domains))
        if rows.numel() == 0:
            continue
        generator = world_generator(domain, preset, head)
        z = torch.randn(rows.numel(), generator.z_dim, generator=gen)
        psi = psi_range[0] + (psi_range[1] - psi_range[0]) * torch.rand(rows.numel(), generator=gen)
        params = head.random_params(rows.numel(), generator=gen, expression_scale=expression_scale, jaw_max=jaw_max)
        images, landmarks = render_frames(generator, z, params, pose.camera[rows], psi)
        identity = (z * psi[:, None])[:, :head.identity_dim]
        frames.append((rows, images, landmarks, FaceParams(identity, params.expression, params.jaw)))
    order = torch.argsort(torch.cat([f[0] for f in frames]))
    cat = lambda i: torch.cat([f[i] for f in frames])[order]  # noqa: E731
    params = FaceParams(*(torch.cat([getattr(f[3], n) for f in frames])[order] for n in ("identity", "expression",
                                                                                           "jaw")))
    return WorldFrames(images=cat(1), landmarks=cat(2), yaw=pose.yaw, pitch=pose.pitch, roll=pose.roll,
                       params=params, camera=pose.camera)


def world_video(frames: int, seed: int, domain: str = "realistic", *, preset: str = "tiny",
                psi: float = 0.7) -> WorldFrames:
    """A smooth ``frames``-long clip of one identity: yaw sweeps ±0.6, pitch and roll sway, the jaw
    opens and closes, a smile comes and goes (a driving video with exact ground truth)."""
    gen = torch.Generator().manual_seed(seed)
    head = default_head_model()
    generator = world_generator(domain, preset, head)
    limits = PoseSamplerConfig()
    t = torch.linspace(0, 1, frames)
    yaw = 0.6 * torch.sin(2 * math.pi * t)
    pitch = (0.2 + 0.2 * torch.sin(4 * math.pi * t)).clamp(*limits.pitch_range)
    roll = 0.1 * torch.sin(2 * math.pi * t + 1.0)
    camera = orbit_camera(yaw, pitch, roll, radius=limits.radius, pivot=limits.pivot, fov_degrees=limits.fov_degrees)
    z = torch.randn(1, generator.z_dim, generator=gen).expand(frames, -1)
    params = head.neutral_params(frames)
    params.jaw[:, 0] = 0.25 * torch.sin(3 * math.pi * t).clamp_min(0)
    params.expression[:, head.expression_names.index("smile")] = torch.sin(2 * math.pi * t + 2.0).clamp_min(0)
    images, landmarks = render_frames(generator, z, params, camera, psi)
    identity = (z * psi)[:, :head.identity_dim]
    return WorldFrames(images=images, landmarks=landmarks, yaw=yaw, pitch=pitch, roll=roll,
                       params=FaceParams(identity, params.expression, params.jaw), camera=camera)
