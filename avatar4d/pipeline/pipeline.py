"""The one inference pipeline (no Ray): portraits → avatars, avatars + driving + cameras → frames.

    pipeline = AvatarPipeline.load("ckpt")                       # DiT, VAE, encoders, generator
    avatars = pipeline.create([portrait_rgb])                    # uint8 [H, W, 3] arrays, batched
    frames = pipeline.animate(avatars[0], preset_sequence("talk", pipeline.head, 48))   # uint8 [N, S, S, 3]

``create``: centred square crop at the training portraits' size → tracking (camera + coefficients;
optional) → CLIP + DINO tokens → DiT sampling (diffusers DPM-Solver++ with classifier-free guidance,
the whole batch at once, each portrait with its own seeded noise so batching never changes an
avatar) → VAE decode → de-normalised parametric triplane. ``render`` takes any number of jobs
(avatar, coefficients, cameras) and renders their frames together in chunks of ``max_batch``. The
stages (:mod:`avatar4d.pipeline.stages`) load on their own too: each Serve deployment holds one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from avatar4d.encoders import ImageEncoders
from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import default_head_model
from avatar4d.pipeline.avatar import Avatar, new_avatar_id
from avatar4d.pipeline.cameras import repeat_camera
from avatar4d.pipeline.checkpoints import PipelineCheckpoints, resolve_checkpoints
from avatar4d.pipeline.config import PipelineConfig
from avatar4d.pipeline.driving import DrivingSequence
from avatar4d.pipeline.stages import FrameStage, PortraitStage, RenderJob, TriplaneSampler, pipeline_device

logger = logging.getLogger(__name__)


def make_job(avatar: Avatar, driving: DrivingSequence, cameras: Camera | None, *, expression_dim: int,
             max_frames: int) -> RenderJob:
    """A checked render job: ``cameras`` of 1 or N frames (None: the portrait's own camera)."""
    driving.check(expression_dim, max_frames)
    frames = driving.frames
    cameras = avatar.camera if cameras is None else cameras
    if not torch.isfinite(cameras.to_label()).all():
        raise UserError("camera values contain NaN or infinity")
    if cameras.batch_size == 1:
        cameras = repeat_camera(cameras, frames)
    if cameras.batch_size != frames:
        raise UserError(f"{cameras.batch_size} cameras for {frames} driving frames (give 1 or {frames})")
    return RenderJob(avatar, driving.expression.float(), driving.jaw.float(), cameras)


def build_avatars(portraits: torch.Tensor, labels: torch.Tensor, coefficients: torch.Tensor,
                  triplanes: torch.Tensor, seeds: Sequence[int], *, hashes: dict[str, str],
                  sampling: dict, identity_dim: int, expression_dim: int) -> list[Avatar]:
    """Avatar objects of one created batch (the CLI and the Serve generator share this)."""
    return [Avatar(avatar_id=new_avatar_id(), triplane=triplanes[k], source_image=portraits[k].cpu(),
                   source_camera=labels[k].float(), source_coefficients=coefficients[k].float(),
                   identity_dim=identity_dim, expression_dim=expression_dim, checkpoints=dict(hashes),
                   sampling={**sampling, "seed": int(seeds[k])}) for k in range(len(seeds))]


class AvatarPipeline:
    """All stages in one process; see the module docstring."""

    def __init__(self, checkpoints: PipelineCheckpoints, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.checkpoints = checkpoints
        self.device = pipeline_device(self.config)
        self.head = default_head_model().to(self.device)
        self.portrait = PortraitStage(checkpoints, self.config, self.head)
        self.encoders = ImageEncoders(checkpoints.encoders).to(self.device)
        self.sampler = TriplaneSampler(checkpoints, self.config, self.encoders)
        self.frames = FrameStage(checkpoints, self.config, self.head)
        self.hashes = {**self.sampler.hashes, "encoders": self.encoders.weights_sha256,
                       "generator": self.frames.parametric.sha256}
        logger.info("pipeline ready on %s: sampler %s (%d steps, guidance %g), renderer %s", self.device,
                    self.sampling.scheduler, self.sampling.steps, self.sampling.guidance_scale, self.renderer.name)

    @classmethod
    def load(cls, checkpoints: str | PipelineCheckpoints, config: PipelineConfig | None = None) -> AvatarPipeline:
        resolved = checkpoints if isinstance(checkpoints, PipelineCheckpoints) else resolve_checkpoints(checkpoints)
        return cls(resolved, config)

    @property
    def sampling(self):
        return self.sampler.sampling

    @sampling.setter
    def sampling(self, value) -> None:
        self.sampler.sampling = value

    @property
    def renderer(self):
        return self.frames.renderer

    @torch.no_grad()
    def create(self, images: Sequence[np.ndarray], seeds: Sequence[int] | None = None) -> list[Avatar]:
        """Avatars of RGB uint8 [H, W, 3] portraits, sampled together (chunks of ``max_batch``)."""
        seeds = list(seeds) if seeds is not None else [self.config.seed] * len(images)
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} portraits")
        avatars: list[Avatar] = []
        for first in range(0, len(images), self.config.max_batch):
            chunk = slice(first, first + self.config.max_batch)
            portraits = self.portrait.portraits(images[chunk])  # [B, 3, P, P] uint8
            labels, coefficients = self.portrait.track(portraits)
            clip, dino = self.encoders(portraits.to(self.device))
            triplanes = self.sampler.sample(clip, dino, seeds[chunk])
            avatars.extend(build_avatars(portraits, labels, coefficients, triplanes, seeds[chunk], hashes=self.hashes,
                                         sampling={**self.sampling.to_dict(), "track": self.config.track},
                                         identity_dim=self.head.identity_dim,
                                         expression_dim=self.head.expression_dim))
        return avatars

    def job(self, avatar: Avatar, driving: DrivingSequence, cameras: Camera | None = None) -> RenderJob:
        self.frames.check_avatar(avatar)
        return make_job(avatar, driving, cameras, expression_dim=self.head.expression_dim,
                        max_frames=self.config.max_frames)

    def render(self, jobs: Sequence[RenderJob], *, progress: Callable[[int], object] | None = None
               ) -> list[np.ndarray]:
        return self.frames.render(jobs, progress=progress)

    def animate(self, avatar: Avatar, driving: DrivingSequence, cameras: Camera | None = None, *,
                progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Frames uint8 [N, S, S, 3] of ``avatar`` driven by ``driving`` seen from ``cameras``."""
        return self.render([self.job(avatar, driving, cameras)], progress=progress)[0]
