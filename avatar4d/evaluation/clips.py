"""What the protocol evaluates on: driving clips and the reenactment cases made from them.

A :class:`DrivingClip` is one subject's frames with, where known, the driving signal of each frame
(the head model's coefficients and the camera): for the procedural world both come with the
multiview sets (ground truth); for real videos they are tracked. Self-reenactment takes a clip's
first frame as the source portrait and its other frames as driving frames *and* ground truth;
cross-reenactment pairs the source portrait of one clip with the driving frames of a clip of
another subject, preferably of another domain (no ground truth).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams


@dataclasses.dataclass
class DrivingClip:
    """frames [T, 3, H, W] float in [0, 1]; params and camera of every frame (batch T)."""

    name: str
    domain: str
    frames: Tensor
    params: FaceParams
    camera: Camera

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[1] != 3 or self.frames.shape[0] < 2:
            raise ValueError(f"clip {self.name}: expected frames [T >= 2, 3, H, W], got {list(self.frames.shape)}")
        if self.params.batch_size != self.frames.shape[0] or self.camera.batch_size != self.frames.shape[0]:
            raise ValueError(f"clip {self.name}: {self.frames.shape[0]} frames but {self.params.batch_size} "
                             f"coefficient rows and {self.camera.batch_size} cameras")

    def select(self, indices: list[int]) -> tuple[Tensor, FaceParams, Camera]:
        params = FaceParams(self.params.identity[indices], self.params.expression[indices], self.params.jaw[indices])
        return self.frames[indices], params, self.camera[indices]


@dataclasses.dataclass
class ReenactmentCase:
    """One avatar driven by one clip. ``task``: "self" (truth = the driving frames) or "cross"."""

    task: str
    name: str
    source_clip: DrivingClip
    driving_clip: DrivingClip
    source_index: int = 0

    @property
    def source(self) -> Tensor:
        """The source portrait [1, 3, H, W]."""
        return self.source_clip.frames[self.source_index:self.source_index + 1]

    def driving_indices(self) -> list[int]:
        frames = self.driving_clip.frames.shape[0]
        if self.task == "self":  # the source frame itself is not a test
            return [i for i in range(frames) if i != self.source_index]
        return list(range(frames))


def make_cases(clips: list[DrivingClip], *, cross: bool = True) -> list[ReenactmentCase]:
    """A self-reenactment case per clip and, with ``cross``, one cross case per clip: its source
    driven by the next clip of another domain (of another subject when every clip shares a domain)."""
    cases = [ReenactmentCase("self", f"self/{clip.name}", clip, clip) for clip in clips]
    if cross and len(clips) > 1:
        for index, clip in enumerate(clips):
            others = clips[index + 1:] + clips[:index]
            driving = next((c for c in others if c.domain != clip.domain), others[0])
            cases.append(ReenactmentCase("cross", f"cross/{clip.name}<-{driving.name}", clip, driving))
    return cases
