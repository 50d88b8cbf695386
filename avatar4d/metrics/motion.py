"""Motion metrics from the face tracker (:mod:`avatar4d.tracking`): AKD, APD and AED.

Both the generated frame and the frame it should match (the driving frame) are tracked with the
same tracker, so its bias cancels and the metric applies to real data without ground truth:

- **AKD** (average keypoint distance, Siarohin et al. 2019): mean Euclidean distance of the 68
  detected landmarks, in pixels of a ``resolution``² image (512, the paper's size, by default);
- **APD** (average pose distance): mean absolute difference of the fitted head pose (yaw, pitch,
  roll), in degrees, averaged over the three angles;
- **AED** (average expression distance): mean absolute difference of the fitted expression
  coefficients (the head model's expression basis and the jaw's axis-angle).

A frame in which the detector finds no face in either image has no distance (NaN per frame);
:func:`nanmean` averages the rest and :attr:`MotionTracks.present` gives the detection rate,
which reports show beside the distances.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch import Tensor

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MotionTracks:
    """Per frame: landmarks [N, 68, 2] (normalised, x right, y down), pose angles [N, 3] (yaw, pitch,
    roll, radians), expression coefficients [N, E] and presence [N]; NaN where no face was found."""

    landmarks: Tensor
    angles: Tensor
    expression: Tensor
    present: Tensor

    @classmethod
    def absent(cls, count: int, expression_dim: int) -> MotionTracks:
        nan = float("nan")
        return cls(landmarks=torch.full((count, 68, 2), nan), angles=torch.full((count, 3), nan),
                   expression=torch.full((count, expression_dim), nan), present=torch.zeros(count, dtype=torch.bool))

    @classmethod
    def cat(cls, parts: list[MotionTracks]) -> MotionTracks:
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


class MotionTracker:
    """Frames → :class:`MotionTracks`, by a :class:`~avatar4d.tracking.Tracker` (default: the shipped
    world-trained landmark regressor and the procedural head)."""

    def __init__(self, tracker=None) -> None:
        if tracker is None:
            from avatar4d.geometry.morphable import default_head_model
            from avatar4d.tracking import RegressorDetector, Tracker

            tracker = Tracker(default_head_model(), RegressorDetector())
        self.tracker = tracker

    def expression_dim(self) -> int:
        return int(self.tracker.head.expression_dim) + 3

    @torch.no_grad()
    def track(self, frames: Tensor) -> MotionTracks:
        """frames [N, 3, H, W] in [0, 1] (square), each fitted on its own."""
        tracker_log = logging.getLogger("avatar4d.tracking.tracker")
        level = tracker_log.level
        tracker_log.setLevel(max(level, logging.ERROR))  # faceless generated frames are a result here, not news
        try:
            with torch.enable_grad():  # the fitter optimises with autograd
                result = self.tracker.track(frames.float().cpu().clamp(0, 1), video=False)
        except UserError:  # no face in any frame
            return MotionTracks.absent(frames.shape[0], self.expression_dim())
        finally:
            tracker_log.setLevel(level)
        fit = result.fit
        present = result.detections.present & fit.present
        expression = torch.cat([fit.params.expression, fit.params.jaw], dim=1).detach()
        return MotionTracks(landmarks=result.detections.landmarks.detach(), angles=fit.pose.angles().detach(),
                            expression=expression, present=present)


def keypoint_distance(a: Tensor, b: Tensor, *, resolution: int = 512) -> Tensor:
    """AKD per frame [N]: mean distance of landmarks [N, K, 2] (normalised) in pixels at ``resolution``²."""
    return (a - b).norm(dim=-1).mean(-1) * resolution


def pose_distance(a: Tensor, b: Tensor) -> Tensor:
    """APD per frame [N]: mean |Δ angle| of (yaw, pitch, roll) [N, 3] (radians), in degrees."""
    return (a - b).abs().mean(-1) * (180.0 / math.pi)


def expression_distance(a: Tensor, b: Tensor) -> Tensor:
    """AED per frame [N]: mean |Δ coefficient| of expression vectors [N, E]."""
    return (a - b).abs().mean(-1)


def motion_distances(generated: MotionTracks, driving: MotionTracks, *, resolution: int = 512) -> dict[str, Tensor]:
    """AKD, APD and AED per frame [N] (NaN where either frame has no face)."""
    both = generated.present & driving.present
    out = {"akd": keypoint_distance(generated.landmarks, driving.landmarks, resolution=resolution),
           "apd": pose_distance(generated.angles, driving.angles),
           "aed": expression_distance(generated.expression, driving.expression)}
    return {name: torch.where(both, value, torch.full_like(value, float("nan"))) for name, value in out.items()}


def nanmean(values: Tensor) -> float:
    """Mean of the entries that are not NaN (NaN when there is none; +inf stays: PSNR of identical frames)."""
    known = values[~torch.isnan(values)]
    return float(known.float().mean()) if known.numel() else float("nan")
