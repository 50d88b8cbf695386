"""Frame renderers: an avatar's triplane + target face coefficients + cameras → frames.

One interface (:class:`FrameRenderer`), so the motion-aware renderer plugs in beside:

- :class:`ParametricFrameRenderer` ("parametric"): the avatar's parametric triplane is placed through
  the target expression's mesh (``ParametricTriplane.compose``) and volume-rendered with the OSG
  decoder and renderer of the generator that made the training data; frames are the raw render
  upsampled bilinearly to the output size (the world's own "super-resolution"; a GAN's needs ws,
  which an avatar does not have). The held-out scorer and the renderer issue's baseline render this way.
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
