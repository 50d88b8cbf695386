"""Frame renderers: an avatar's triplane + target face coefficients + cameras → frames.

One interface (:class:`FrameRenderer`), two kinds:

- :class:`ParametricFrameRenderer` ("parametric"): the avatar's parametric triplane is placed through
  the target expression's mesh (``ParametricTriplane.compose``) and volume-rendered with the OSG
  decoder and renderer of the generator that made the training data; frames are the raw render
  upsampled bilinearly to the output size (the world's own "super-resolution"; a GAN's needs ws,
  which an avatar does not have). The held-out scorer and the renderer issue's baseline render this way.
- :class:`MotionAwareFrameRenderer` ("motion-aware"): the trained motion-aware renderer refines the
  placed triplane from the source portrait and the motion of the driving frame.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar4d.generators import DomainRenderer
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams, MorphableModel

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FrameBatch:
    image: Tensor  # [B, 3, S, S] in [-1, 1]
    depth: Tensor  # [B, 1, N, N]
    opacity: Tensor  # [B, 1, N, N]


class FrameRenderer(Protocol):
    name: str
    sha256: str
    output_resolution: int

    def render(self, triplanes: Tensor, source_images: Tensor, params: FaceParams, cameras: Camera) -> FrameBatch:
        """triplanes [B, 4, C, R, R], source portraits uint8 [B, 3, H, W], target coefficients [B],
        cameras [B] → :class:`FrameBatch`."""
        ...


class ParametricFrameRenderer:
    """Renders parametric triplanes with the frozen decoder and renderer of one generator checkpoint."""

    name = "parametric"

    def __init__(self, generator: str | Path, head: MorphableModel, device: torch.device, *,
                 render_resolution: int | None = None, output_resolution: int | None = None) -> None:
        from avatar4d.checkpoint.io import read_checkpoint_info

        info = read_checkpoint_info(generator)
        self.domain = DomainRenderer(generator, head, device)
        self.head = head
        self.sha256 = self.domain.sha256
        config = info.config
        self.render_resolution = render_resolution or int(config.get("neural_resolution", 64))
        self.output_resolution = output_resolution or int(config.get("image_resolution", self.render_resolution))
        self.portrait_resolution = int(config.get("image_resolution", self.output_resolution))

    @torch.no_grad()
    def render(self, triplanes: Tensor, source_images: Tensor, params: FaceParams, cameras: Camera) -> FrameBatch:
        vertices = self.head.vertices(params)  # [B, V, 3]
        planes = self.domain.planes(triplanes.float(), vertices)  # [B, 3, C, R, R]
        rendered = self.domain.render(planes, cameras, self.render_resolution)
        image = rendered.rgb.clamp(-1, 1)  # [B, 3, N, N]
        if image.shape[-1] != self.output_resolution:
            image = F.interpolate(image, size=(self.output_resolution,) * 2, mode="bilinear", align_corners=False)
        return FrameBatch(image=image.clamp(-1, 1), depth=rendered.depth, opacity=rendered.opacity)


class MotionAwareFrameRenderer:
    """The trained motion-aware renderer (:mod:`avatar4d.models.renderer`; ``train renderer`` saves it with its
    motion encoder in ``motion_encoder/``). As in training, the source motion is the encoder's reading of the
    portrait and the driving motion its reading of a driving frame; a coefficient drive has no frame, so the
    driving frame is the avatar's parametric render of that expression from that camera."""

    name = "motion-aware"

    def __init__(self, checkpoint: str | Path, parametric: ParametricFrameRenderer, device: torch.device, *,
                 output_resolution: int | None = None) -> None:
        from avatar4d.checkpoint.io import read_checkpoint_info
        from avatar4d.models.renderer import MotionAwareRenderer, MotionEncoder

        checkpoint = Path(checkpoint)
        if not (checkpoint / "motion_encoder").is_dir():
            raise FileNotFoundError(f"{checkpoint / 'motion_encoder'} (the renderer's motion encoder)")
        self.model = MotionAwareRenderer.from_pretrained(checkpoint, head=parametric.head).to(device).eval()
        self.motion = MotionEncoder.from_pretrained(checkpoint / "motion_encoder").to(device).eval()
        self.sha256 = read_checkpoint_info(checkpoint).weights_sha256
        self.parametric = parametric
        self.output_resolution = output_resolution or parametric.output_resolution

    @torch.no_grad()
    def render(self, triplanes: Tensor, source_images: Tensor, params: FaceParams, cameras: Camera) -> FrameBatch:
        driving = self.parametric.render(triplanes, source_images, params, cameras).image  # [B, 3, S, S]
        source = source_images.float() / 127.5 - 1  # [B, 3, H, W] in [-1, 1]
        out = self.model(source, triplanes.float(), self.motion(driving), self.parametric.head.vertices(params),
                         cameras, source_motion=self.motion(source))
        image = out["image"].clamp(-1, 1)  # [B, 3, S', S']
        if image.shape[-1] != self.output_resolution:
            image = F.interpolate(image, size=(self.output_resolution,) * 2, mode="bilinear", align_corners=False)
        return FrameBatch(image=image, depth=out["depth"], opacity=out["opacity"])
