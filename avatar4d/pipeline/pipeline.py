"""The one inference pipeline (no Ray): portraits → avatars, avatars + driving + cameras → frames.

    pipeline = AvatarPipeline.load("ckpt")                       # DiT, VAE, encoders, generator
    avatars = pipeline.create([portrait_rgb])                    # uint8 [H, W, 3] arrays, batched
    frames = pipeline.animate(avatars[0], preset_sequence("talk", pipeline.head, 48))   # uint8 [N, S, S, 3]

``create``: centred square crop at the training portraits' size → tracking (camera + coefficients;
optional) → CLIP + DINO tokens → DiT sampling (diffusers DPM-Solver++ with classifier-free guidance,
the whole batch at once, each portrait with its own seeded noise so batching never changes an
avatar) → VAE decode → de-normalised parametric triplane. ``render`` takes any number of jobs
(avatar, coefficients, cameras) and renders their frames together in chunks of ``max_batch``: the
Serve renderer batches requests of different avatars through it. The CLI, the Serve deployments,
the benchmark and the demo all call this class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from avatar4d.diffusion import DiffusionConfig, SamplingConfig
from avatar4d.diffusion.sampling import sample_latents
from avatar4d.encoders import ImageEncoders
from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera, orbit_camera
from avatar4d.geometry.morphable import FaceParams, default_head_model
from avatar4d.models.dit import load_dit
from avatar4d.models.vae import from_dit_tokens, load_vae, unscale_latent
from avatar4d.pipeline.avatar import Avatar, new_avatar_id
from avatar4d.pipeline.cameras import repeat_camera
from avatar4d.pipeline.checkpoints import PipelineCheckpoints, resolve_checkpoints
from avatar4d.pipeline.config import PipelineConfig
from avatar4d.pipeline.driving import DrivingSequence
from avatar4d.pipeline.frames import FrameRenderer, ParametricFrameRenderer
from avatar4d.pipeline.images import square_portrait

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RenderJob:
    """Frames of one avatar: target expression [N, Ne] and jaw [N, 3] coefficients, cameras [N]."""

    avatar: Avatar
    expression: Tensor
    jaw: Tensor
    cameras: Camera

    @property
    def frames(self) -> int:
        return self.expression.shape[0]


class AvatarPipeline:
    """Loaded models and the two operations on them; see the module docstring."""

    def __init__(self, checkpoints: PipelineCheckpoints, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.checkpoints = checkpoints
        self.device = torch.device(self.config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda was asked for but no CUDA device is available; use --device cpu")
        self.dit, dit_info = load_dit(checkpoints.dit, device=self.device)
        self.vae, vae_info = load_vae(checkpoints.vae, device=self.device)
        self.dit.eval().requires_grad_(False)
        self.vae.eval().requires_grad_(False)
        self.encoders = ImageEncoders(checkpoints.encoders).to(self.device)
        trained = dit_info.metadata.get("config", {}) if isinstance(dit_info.metadata, dict) else {}
        self.sampling = self.config.sampling or (SamplingConfig.from_dict(trained["sampling"]) if "sampling" in trained
                                                 else SamplingConfig())
        self.diffusion = (DiffusionConfig.from_dict(trained["diffusion"]) if "diffusion" in trained
                          else DiffusionConfig())
        self.head = default_head_model().to(self.device)
        self.parametric = ParametricFrameRenderer(checkpoints.generator, self.head, self.device,
                                                  render_resolution=self.config.render_resolution,
                                                  output_resolution=self.config.output_resolution)
        self.renderer: FrameRenderer = self.parametric
        self.portrait_resolution = self.parametric.portrait_resolution
        self._tracker = None
        self.hashes = {"dit": dit_info.weights_sha256, "vae": vae_info.weights_sha256,
                       "encoders": self.encoders.weights_sha256, "generator": self.parametric.sha256}
        vae_config = self.vae.config
        self.latent_shape = (vae_config.embed_dim, vae_config.num_planes * vae_config.latent_resolution,
                             vae_config.latent_resolution)
        expected = tuple(self.dit.config.input_size)
        if (self.dit.config.in_channels, *expected) != self.latent_shape:
            raise UserError(f"the DiT ({checkpoints.dit}) denoises latents {[self.dit.config.in_channels, *expected]}, "
                            f"the VAE ({checkpoints.vae}) makes {list(self.latent_shape)}: they were not trained "
                            "together")
        logger.info("pipeline ready on %s: sampler %s (%d steps, guidance %g), renderer %s", self.device,
                    self.sampling.scheduler, self.sampling.steps, self.sampling.guidance_scale, self.renderer.name)

    @classmethod
    def load(cls, checkpoints: str | PipelineCheckpoints, config: PipelineConfig | None = None) -> AvatarPipeline:
        resolved = checkpoints if isinstance(checkpoints, PipelineCheckpoints) else resolve_checkpoints(checkpoints)
        return cls(resolved, config)

    # --- creating avatars ---------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def tracker(self):
        if self._tracker is None:
            from avatar4d.tracking.landmarks import RegressorDetector
            from avatar4d.tracking.tracker import Tracker

            self._tracker = Tracker(self.head, RegressorDetector(device=self.device))
        return self._tracker

    def portraits(self, images: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 [H, W, 3] images → square portraits uint8 [B, 3, P, P] at the training size."""
        return torch.stack([square_portrait(image, self.portrait_resolution) for image in images])

    def track(self, portraits: Tensor) -> tuple[Tensor, Tensor]:
        """Portraits uint8 [B, 3, P, P] → (camera labels [B, 25], coefficients [B, Ni + Ne + 3])."""
        count = portraits.shape[0]
        if not self.config.track:
            camera = orbit_camera(torch.zeros(count), torch.zeros(count))
            params = FaceParams.zeros(count, self.head.identity_dim, self.head.expression_dim)
            return camera.to_label(), params.to_vector()
        with torch.enable_grad():  # the fitter optimises with autograd; create() runs under no_grad
            result = self.tracker.track(portraits.permute(0, 2, 3, 1).numpy(), video=False)
        missing = result.missing_frames
        if missing:
            raise UserError(f"no face found in portrait {missing[0]} (the detector expects a head centred and "
                            "filling the frame)")
        return result.fit.camera.to_label().detach().cpu(), result.fit.params.to_vector().detach().cpu()

    @torch.no_grad()
    def create(self, images: Sequence[np.ndarray], seeds: Sequence[int] | None = None) -> list[Avatar]:
        """Avatars of RGB uint8 [H, W, 3] portraits, sampled together (chunks of ``max_batch``)."""
        if not images:
            return []
        seeds = list(seeds) if seeds is not None else [self.config.seed] * len(images)
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} portraits")
        avatars: list[Avatar] = []
        for first in range(0, len(images), self.config.max_batch):
            chunk = slice(first, first + self.config.max_batch)
            avatars.extend(self._create_batch(self.portraits(images[chunk]), seeds[chunk]))
        return avatars

    def _create_batch(self, portraits: Tensor, seeds: Sequence[int]) -> list[Avatar]:
        started = time.perf_counter()
        labels, coefficients = self.track(portraits)
        tracked = time.perf_counter()
        with self._autocast():
            clip, dino = self.encoders(portraits.to(self.device))  # [B, Tc, Dc], [B, Td, Dd]
            noise = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(seed)))
                                 for seed in seeds])  # [B, C, H, W]
            latents = sample_latents(self.dit, clip.float(), dino.float(), (len(seeds), *self.latent_shape),
                                     sampling=self.sampling, diffusion=self.diffusion, device=self.device,
                                     noise=noise)  # [B, C, F·h, w]
            z = unscale_latent(from_dit_tokens(latents, self.vae.config.num_planes),
                               self.vae.config.latent_scale_factor)
            triplanes = self.vae.decode_triplane(z).float().cpu()  # [B, 4, C, R, R]
        logger.debug("created %d avatars: tracking %.3fs, sampling + decoding %.3fs", len(seeds), tracked - started,
                     time.perf_counter() - tracked)
        sampling = {**self.sampling.to_dict(), "track": self.config.track}
        return [Avatar(avatar_id=new_avatar_id(), triplane=triplanes[k], source_image=portraits[k].cpu(),
                       source_camera=labels[k].float(), source_coefficients=coefficients[k].float(),
                       identity_dim=self.head.identity_dim, expression_dim=self.head.expression_dim,
                       checkpoints=dict(self.hashes), sampling={**sampling, "seed": int(seeds[k])})
                for k in range(len(seeds))]

    # --- rendering ----------------------------------------------------------------------------
    def job(self, avatar: Avatar, driving: DrivingSequence, cameras: Camera | None = None) -> RenderJob:
        """A checked render job: ``cameras`` of 1 or N frames (None: the portrait's own camera)."""
        self.check_avatar(avatar)
        driving.check(self.head.expression_dim, self.config.max_frames)
        frames = driving.frames
        cameras = avatar.camera if cameras is None else cameras
        if cameras.batch_size == 1:
            cameras = repeat_camera(cameras, frames)
        if cameras.batch_size != frames:
            raise UserError(f"{cameras.batch_size} cameras for {frames} driving frames (give 1 or {frames})")
        if not torch.isfinite(cameras.to_label()).all():
            raise UserError("camera values contain NaN or infinity")
        return RenderJob(avatar, driving.expression.float(), driving.jaw.float(), cameras)

    def check_avatar(self, avatar: Avatar) -> None:
        expected = self.vae.config.num_planes, self.parametric.domain.plane_channels
        if tuple(avatar.triplane.shape[:2]) != expected:
            raise UserError(f"the avatar's triplane {list(avatar.triplane.shape)} does not fit these models "
                            f"({expected[0]} planes × {expected[1]} channels)")
        if (avatar.identity_dim, avatar.expression_dim) != (self.head.identity_dim, self.head.expression_dim):
            raise UserError("the avatar was made with another head model")

    def _rows(self, jobs: Sequence[RenderJob]) -> Iterator[tuple[Tensor, Tensor, FaceParams, Camera]]:
        """All frames of all jobs as rows, in chunks of ``max_batch``."""
        triplanes, images, params, cameras = [], [], [], []
        for job in jobs:
            n = job.frames
            identity = job.avatar.face_params.identity.expand(n, -1)
            triplanes.append(job.avatar.triplane[None].expand(n, -1, -1, -1, -1))
            images.append(job.avatar.source_image[None].expand(n, -1, -1, -1))
            params.append(FaceParams(identity=identity, expression=job.expression, jaw=job.jaw))
            cameras.append(job.cameras)
        triplane, image = torch.cat(triplanes), torch.cat(images)
        param = FaceParams(*(torch.cat([getattr(p, name) for p in params]) for name in ("identity", "expression",
                                                                                         "jaw")))
        camera = Camera.cat(cameras)
        for first in range(0, triplane.shape[0], self.config.max_batch):
            rows = slice(first, first + self.config.max_batch)
            yield (triplane[rows].to(self.device), image[rows].to(self.device),
                   FaceParams(param.identity[rows], param.expression[rows], param.jaw[rows]).to(self.device),
                   camera[rows].to(self.device))

    @torch.no_grad()
    def render(self, jobs: Sequence[RenderJob], *, progress=None) -> list[np.ndarray]:
        """Frames uint8 [N, S, S, 3] for each job; ``progress(frames_done)`` after every chunk."""
        outputs = []
        with self._autocast():
            for triplane, image, params, cameras in self._rows(jobs):
                batch = self.renderer.render(triplane, image, params, cameras)
                outputs.append(to_uint8(batch.image))
                if progress is not None:
                    progress(triplane.shape[0])
        frames = np.concatenate(outputs) if outputs else np.zeros((0, 1, 1, 3), np.uint8)
        split = np.cumsum([job.frames for job in jobs])[:-1]
        return list(np.split(frames, split))

    def animate(self, avatar: Avatar, driving: DrivingSequence, cameras: Camera | None = None, *,
                progress=None) -> np.ndarray:
        """Frames uint8 [N, S, S, 3] of ``avatar`` driven by ``driving`` seen from ``cameras``."""
        return self.render([self.job(avatar, driving, cameras)], progress=progress)[0]


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
