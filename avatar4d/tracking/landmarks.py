"""One interface for 2D face landmarks: frames in, 68 iBUG landmarks and face presence out.

:class:`RegressorDetector` (the embedded default) runs the CNN trained on the procedural world
(:mod:`avatar4d.tracking.regressor`). Any other detector (a maintained library's model loaded
from a local path) plugs in by implementing :class:`LandmarkDetector`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor


@dataclasses.dataclass
class Detections:
    """landmarks [N, 68, 2] normalised image coordinates (x right, y down, [0, 1]; NaN where no face),
    present [N] bool, score [N] face probability."""

    landmarks: Tensor
    present: Tensor
    score: Tensor


class LandmarkDetector(Protocol):
    name: str

    def detect(self, frames: Tensor) -> Detections:
        """frames [N, 3, H, W] float in [0, 1] → detections."""
        ...


class RegressorDetector:
    """The world-trained landmark regressor; a frame is a face when its presence probability ≥ ``threshold``."""

    name = "world-regressor"

    def __init__(self, checkpoint: str | Path | None = None, *, threshold: float = 0.5, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        from avatar4d.tracking.regressor import load_regressor

        self.model = load_regressor(checkpoint, device=device)
        self.threshold, self.batch_size, self.device = threshold, batch_size, torch.device(device)

    @torch.no_grad()
    def detect(self, frames: Tensor) -> Detections:
        points, scores = [], []
        for start in range(0, frames.shape[0], self.batch_size):
            chunk = frames[start:start + self.batch_size].to(self.device, torch.float32)
            landmarks, logit = self.model(chunk)  # [B, 68, 2], [B]
            points.append(landmarks.cpu())
            scores.append(torch.sigmoid(logit).cpu())
        landmarks, score = torch.cat(points), torch.cat(scores)
        present = score >= self.threshold
        landmarks[~present] = float("nan")
        return Detections(landmarks=landmarks, present=present, score=score)


class GroundTruthDetector:
    """Known landmarks (world renders): the fitter alone, without detection error."""

    name = "ground-truth"

    def __init__(self, landmarks: Tensor, present: Tensor | None = None) -> None:
        self.landmarks = landmarks
        self.present = torch.ones(landmarks.shape[0], dtype=torch.bool) if present is None else present

    def detect(self, frames: Tensor) -> Detections:
        landmarks = self.landmarks.clone()
        landmarks[~self.present] = float("nan")
        return Detections(landmarks=landmarks, present=self.present.clone(), score=self.present.float())
