"""The pipeline's stages, each loadable on its own (a Serve deployment holds one; the CLI holds all):

- :class:`PortraitStage`: image → square portrait at the training size → tracking (camera, coefficients);
- :class:`TriplaneSampler`: CLIP/DINO tokens + seeds → DiT sampling → VAE decode → triplanes;
- :class:`FrameStage`: render jobs (avatar, coefficients, cameras) → frames, through a frame renderer.

The image encoders are :class:`avatar4d.encoders.ImageEncoders` as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from avatar4d.checkpoint.io import read_checkpoint_info
from avatar4d.diffusion import DiffusionConfig, SamplingConfig
from avatar4d.diffusion.sampling import sample_latents
from avatar4d.encoders import ImageEncoders
from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera, orbit_camera
from avatar4d.geometry.morphable import FaceParams, MorphableModel, default_head_model
from avatar4d.models.dit import load_dit
from avatar4d.models.vae import from_dit_tokens, load_vae, unscale_latent
from avatar4d.pipeline.avatar import Avatar
from avatar4d.pipeline.checkpoints import PipelineCheckpoints
from avatar4d.pipeline.config import PipelineConfig
from avatar4d.pipeline.frames import FrameRenderer, MotionAwareFrameRenderer, ParametricFrameRenderer
from avatar4d.pipeline.images import square_portrait

logger = logging.getLogger(__name__)


def autocast(config: PipelineConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if config.precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pipeline_device(config: PipelineConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


class PortraitStage:
    """Crops portraits to the size the models were trained on and tracks them."""

    def __init__(self, checkpoints: PipelineCheckpoints, config: PipelineConfig,
                 head: MorphableModel | None = None) -> None:
        self.config = config
        self.device = pipeline_device(config)
        self.head = head or default_head_model().to(self.device)
        generator = read_checkpoint_info(checkpoints.generator).config
        self.resolution = int(generator.get("image_resolution", 512))
        self._tracker = None

    @property
    def tracker(self):
        if self._tracker is None:
            from avatar4d.tracking.landmarks import RegressorDetector
            from avatar4d.tracking.tracker import Tracker

            self._tracker = Tracker(self.head, RegressorDetector(device=self.device))
        return self._tracker

    def portraits(self, images: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 [H, W, 3] images → square portraits uint8 [B, 3, P, P] at the training size."""
        return torch.stack([square_portrait(image, self.resolution) for image in images])

    def track(self, portraits: Tensor) -> tuple[Tensor, Tensor]:
        """Portraits uint8 [B, 3, P, P] → (camera labels [B, 25], coefficients [B, Ni + Ne + 3])."""
        count = portraits.shape[0]
        if not self.config.track:
            camera = orbit_camera(torch.zeros(count), torch.zeros(count))
            params = FaceParams.zeros(count, self.head.identity_dim, self.head.expression_dim)
            return camera.to_label(), params.to_vector()
        with torch.enable_grad():  # the fitter optimises with autograd; callers may run under no_grad
            result = self.tracker.track(portraits.permute(0, 2, 3, 1).numpy(), video=False)
        if result.missing_frames:
            raise UserError(f"no face found in portrait {result.missing_frames[0]} (the detector expects a head "
                            "centred and filling the frame)")
        return result.fit.camera.to_label().detach().cpu().float(), result.fit.params.to_vector().detach().cpu().float()


class TriplaneSampler:
    """DiT + VAE: image tokens → de-normalised parametric triplanes, each with its own seeded noise."""

    def __init__(self, checkpoints: PipelineCheckpoints, config: PipelineConfig,
                 encoders: ImageEncoders | None = None) -> None:
        """``encoders``: the caller's loaded image encoders, used only for a release-style DiT's null
        condition (without them that DiT loads its own copy once)."""
        self.config = config
        self.device = pipeline_device(config)
        self.dit, dit_info = load_dit(checkpoints.dit, device=self.device)
        self.vae, vae_info = load_vae(checkpoints.vae, device=self.device)
        self.dit.eval().requires_grad_(False)
        self.vae.eval().requires_grad_(False)
        trained = dit_info.metadata.get("config", {}) if isinstance(dit_info.metadata, dict) else {}
        self.sampling = config.sampling or (SamplingConfig.from_dict(trained["sampling"]) if "sampling" in trained
                                            else SamplingConfig())
        self.diffusion = (DiffusionConfig.from_dict(trained["diffusion"]) if "diffusion" in trained
                          else DiffusionConfig())
        self.hashes = {"dit": dit_info.weights_sha256, "vae": vae_info.weights_sha256}
        self.null_clip = (self._zero_image_tokens(encoders if encoders is not None
                                                    else ImageEncoders(checkpoints.encoders))
                          if self.dit.config.null_clip == "zero_image" else None)
        vae = self.vae.config
        self.latent_shape = (vae.embed_dim, vae.num_planes * vae.latent_resolution, vae.latent_resolution)
        dit_shape = (self.dit.config.in_channels, *self.dit.config.input_size)
        if tuple(dit_shape) != self.latent_shape:
            raise UserError(f"the DiT ({checkpoints.dit}) denoises latents {list(dit_shape)}, the VAE "
                            f"({checkpoints.vae}) makes {list(self.latent_shape)}: they were not trained together")

    def _zero_image_tokens(self, encoders: ImageEncoders) -> Tensor:
        """CLIP tokens [1, Tc, Dc] of an all-zero image: the released DiT's unconditional input, computed once
        here so every caller of :meth:`sample` guides alike."""
        encoders = encoders.to(self.device).eval()
        with torch.no_grad():
            clip, _ = encoders.null_condition()
        return clip[None].float()

    def noise(self, seeds: Sequence[int]) -> Tensor:
        """Unit Gaussian noise [B, C, H, W], one seeded draw per request (batching never changes an avatar)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(seed)))
                            for seed in seeds])

    @torch.no_grad()
    def sample(self, clip: Tensor, dino: Tensor, seeds: Sequence[int]) -> Tensor:
        """CLIP tokens [B, Tc, Dc], DINO tokens [B, Td, Dd] → triplanes [B, 4, C, R, R] (float32, CPU)."""
        with autocast(self.config, self.device):
            latents = sample_latents(self.dit, clip.float().to(self.device), dino.float().to(self.device),
                                     (len(seeds), *self.latent_shape), sampling=self.sampling,
                                     diffusion=self.diffusion, device=self.device, null_clip=self.null_clip,
                                     noise=self.noise(seeds))  # [B, C, F·h, w]
            z = unscale_latent(from_dit_tokens(latents, self.vae.config.num_planes),
                               self.vae.config.latent_scale_factor)  # [B, C, F, h, w]
            return self.vae.decode_triplane(z).float().cpu()  # [B, 4, C, R, R]


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


class FrameStage:
    """Renders any number of jobs together, in chunks of ``max_batch`` frames."""

    def __init__(self, checkpoints: PipelineCheckpoints, config: PipelineConfig,
                 head: MorphableModel | None = None) -> None:
        self.config = config
        self.device = pipeline_device(config)
        self.head = head or default_head_model().to(self.device)
        self.parametric = ParametricFrameRenderer(checkpoints.generator, self.head, self.device,
                                                  render_resolution=config.render_resolution,
                                                  output_resolution=config.output_resolution)
        self.renderer: FrameRenderer = self.parametric
        if config.renderer == "motion-aware" and checkpoints.renderer is None:
            raise UserError("the motion-aware renderer was asked for but the checkpoints name none "
                            "(pipeline.json \"renderer\", or a renderer/ folder)")
        if config.renderer != "parametric" and checkpoints.renderer is not None:
            self.renderer = MotionAwareFrameRenderer(checkpoints.renderer, self.parametric, self.device,
                                                     output_resolution=config.output_resolution)

    def check_avatar(self, avatar: Avatar) -> None:
        channels = self.parametric.domain.plane_channels
        if avatar.triplane.shape[1] != channels:
            raise UserError(f"the avatar's triplane {list(avatar.triplane.shape)} does not fit this renderer "
                            f"({channels} channels per plane)")
        if (avatar.identity_dim, avatar.expression_dim) != (self.head.identity_dim, self.head.expression_dim):
            raise UserError("the avatar was made with another head model")

    def _chunks(self, jobs: Sequence[RenderJob]) -> Iterator[tuple[Tensor, Tensor, FaceParams, Camera]]:
        triplanes = torch.cat([job.avatar.triplane[None].expand(job.frames, -1, -1, -1, -1) for job in jobs])
        images = torch.cat([job.avatar.source_image[None].expand(job.frames, -1, -1, -1) for job in jobs])
        identity = torch.cat([job.avatar.face_params.identity.expand(job.frames, -1) for job in jobs])
        expression = torch.cat([job.expression for job in jobs])
        jaw = torch.cat([job.jaw for job in jobs])
        cameras = Camera.cat([job.cameras for job in jobs])
        for first in range(0, triplanes.shape[0], self.config.max_batch):
            rows = slice(first, first + self.config.max_batch)
            params = FaceParams(identity[rows], expression[rows], jaw[rows]).to(self.device)
            yield triplanes[rows].to(self.device), images[rows].to(self.device), params, cameras[rows].to(self.device)

    @torch.no_grad()
    def render(self, jobs: Sequence[RenderJob], *, progress: Callable[[int], object] | None = None
               ) -> list[np.ndarray]:
        """Frames uint8 [N, S, S, 3] for each job; ``progress(frames_done)`` after every chunk."""
        if not jobs:
            return []
        outputs = []
        with autocast(self.config, self.device):
            for triplane, image, params, cameras in self._chunks(jobs):
                outputs.append(to_uint8(self.renderer.render(triplane, image, params, cameras).image))
                if progress is not None:
                    progress(triplane.shape[0])
        split = np.cumsum([job.frames for job in jobs])[:-1]
        return list(np.split(np.concatenate(outputs), split))


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
