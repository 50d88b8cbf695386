"""Avatar makers the protocol evaluates: the inference pipeline (:mod:`avatar4d.pipeline`), loaded
from a checkpoints folder as ``avatar4d create`` loads it, so the evaluation measures exactly what
users run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams

logger = logging.getLogger(__name__)


class PipelineMaker:
    """:class:`~avatar4d.evaluation.protocol.AvatarMaker` over an ``AvatarPipeline``: the portrait is
    tracked, encoded, sampled by the DiT and decoded by the VAE; frames take the avatar's identity
    with the driving expression, jaw and camera of each frame. ``seed``: the DiT's noise (the same
    for every portrait, so models compare on equal draws)."""

    def __init__(self, pipeline: Any, name: str, *, seed: int = 0) -> None:
        self.pipeline, self.name, self.seed = pipeline, name, seed

    @classmethod
    def load(cls, checkpoints: str | Path, *, name: str | None = None, device: str = "cpu", seed: int = 0,
             preset: str = "tiny") -> PipelineMaker:
        from avatar4d.pipeline.config import PIPELINE_PRESETS
        from avatar4d.pipeline.pipeline import AvatarPipeline

        config = PIPELINE_PRESETS.get(preset).replace(device=device, seed=seed)
        return cls(AvatarPipeline.load(str(checkpoints), config), name or Path(checkpoints).name, seed=seed)

    def info(self) -> dict[str, Any]:
        hashes = getattr(self.pipeline, "hashes", {})
        return {"checkpoints": dict(hashes)} if hashes else {}

    def create(self, portrait: Tensor) -> Any:
        image = (portrait.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # [H, W, 3]
        return self.pipeline.create([image], seeds=[self.seed])[0]

    def drive(self, avatar: Any, params: FaceParams, camera: Camera) -> Tensor:
        from avatar4d.pipeline.driving import DrivingSequence

        driving = DrivingSequence(expression=params.expression.float().cpu(), jaw=params.jaw.float().cpu(),
                                  source="evaluation")
        frames = self.pipeline.animate(avatar, driving, camera.to("cpu"))  # uint8 [T, S, S, 3]
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255  # [T, 3, S, S]
