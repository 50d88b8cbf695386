"""Driving signals: what makes an avatar move. Three sources, one :class:`DrivingSequence`
(per-frame expression coefficients [N, Ne] and jaw rotations [N, 3] of the head model):

- a named preset (``talk``, ``smile``, ``blink``, ``nod``, ``neutral``): built-in loops over the
  procedural head's named expressions, so the demo and the web page need no input;
- an expressions file: JSON (``{"expression": [[...], ...], "jaw": [[...], ...]}``, or the
  ``tracking.json`` that ``avatar4d track`` writes) or ``.npy`` ([N, Ne] or [N, Ne + 3]);
- a driving video, tracked frame by frame (:mod:`avatar4d.tracking`).

Every value is checked: finite, within ``MAX_COEFFICIENT``, at most ``max_frames`` frames.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar4d.errors import UserError
from avatar4d.geometry.morphable import MorphableModel

MAX_COEFFICIENT = 5.0
JAW_DIM = 3


@dataclasses.dataclass
class DrivingSequence:
    """expression [N, Ne], jaw [N, 3] (axis-angle, radians); ``fps`` of the source (None: the pipeline's)."""

    expression: Tensor
    jaw: Tensor
    fps: float | None = None
    source: str = "preset"

    @property
    def frames(self) -> int:
        return self.expression.shape[0]

    def check(self, expression_dim: int, max_frames: int) -> DrivingSequence:
        """The sequence itself if it fits the head model and the limits, else a one-line :class:`UserError`."""
        if self.expression.ndim != 2 or self.jaw.ndim != 2 or self.jaw.shape[1] != JAW_DIM:
            raise UserError(f"driving coefficients must be [frames, {expression_dim}] expressions and "
                            f"[frames, 3] jaw rotations, got {list(self.expression.shape)} and {list(self.jaw.shape)}")
        if self.expression.shape[1] != expression_dim:
            raise UserError(f"the head model has {expression_dim} expression coefficients, the driving signal "
                            f"{self.expression.shape[1]}")
        if self.expression.shape[0] != self.jaw.shape[0]:
            raise UserError(f"{self.expression.shape[0]} expression frames but {self.jaw.shape[0]} jaw frames")
        if not 1 <= self.frames <= max_frames:
            raise UserError(f"the driving signal has {self.frames} frames; the limit is {max_frames} (at least 1)")
        for name, values in (("expression", self.expression), ("jaw", self.jaw)):
            if not torch.isfinite(values).all():
                raise UserError(f"the driving {name} coefficients contain NaN or infinity")
            if values.abs().max() > MAX_COEFFICIENT:
                raise UserError(f"driving {name} coefficients must be within ±{MAX_COEFFICIENT:g}, "
                                f"got {float(values.abs().max()):.3g}")
        return self


def from_arrays(expression: Sequence[Sequence[float]] | np.ndarray | Tensor,
                jaw: Sequence[Sequence[float]] | np.ndarray | Tensor | None = None, *,
                source: str = "coefficients") -> DrivingSequence:
    """Coefficients given as nested lists or arrays; a missing jaw is zero."""
    try:
        expression_t = torch.as_tensor(np.asarray(expression, dtype=np.float32))
        jaw_t = (torch.zeros(expression_t.shape[0] if expression_t.ndim else 0, JAW_DIM) if jaw is None
                 else torch.as_tensor(np.asarray(jaw, dtype=np.float32)))
    except (TypeError, ValueError) as exc:
        raise UserError(f"driving coefficients must be numbers in [frames][coefficients] lists ({exc})") from None
    if expression_t.ndim != 2:
        raise UserError(f"driving expressions must be a [frames][coefficients] list, got shape "
                        f"{list(expression_t.shape)}")
    return DrivingSequence(expression=expression_t, jaw=jaw_t, source=source)


# --- presets ------------------------------------------------------------------------------------

def _weights(head: MorphableModel, frames: int, tracks: dict[str, Callable[[np.ndarray], np.ndarray]]) -> Tensor:
    names = list(getattr(head, "expression_names", []))
    phase = np.arange(frames, dtype=np.float64) / max(frames, 1)
    expression = np.zeros((frames, head.expression_dim), dtype=np.float32)
    for name, curve in tracks.items():
        if name in names:
            expression[:, names.index(name)] = curve(phase)
    return torch.from_numpy(expression)


def _blink(phase: np.ndarray, times: Sequence[float] = (0.3, 0.8), width: float = 0.04) -> np.ndarray:
    return np.clip(sum(np.exp(-0.5 * ((phase - t) / width) ** 2) for t in times), 0, 1)


def _talk(phase: np.ndarray) -> np.ndarray:
    # syllables: a fast open/close under a slower phrase envelope; never negative (the mouth only opens)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 6 * phase)
    phrase = 0.55 + 0.45 * np.sin(2 * np.pi * 2 * phase) ** 2
    return (0.8 * syllables * phrase).astype(np.float32)


PRESETS: dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]] = {
    "neutral": {},
    "talk": {"jaw_open": _talk, "mouth_stretch": lambda p: 0.25 * np.sin(2 * np.pi * 3 * p) ** 2,
             "smile": lambda p: 0.3 * (0.5 - 0.5 * np.cos(2 * np.pi * p)), "blink_left": _blink,
             "blink_right": _blink},
    "smile": {"smile": lambda p: np.sin(np.pi * p) ** 2, "squint": lambda p: 0.4 * np.sin(np.pi * p) ** 2},
    "blink": {"blink_left": lambda p: _blink(p, (0.25, 0.75), 0.06),
              "blink_right": lambda p: _blink(p, (0.25, 0.75), 0.06)},
    "surprise": {"jaw_open": lambda p: 0.7 * np.sin(np.pi * p) ** 2, "brow_raise": lambda p: np.sin(np.pi * p) ** 2},
}


def preset_sequence(name: str, head: MorphableModel, frames: int) -> DrivingSequence:
    """The named built-in expression loop over ``frames`` frames."""
    if name not in PRESETS:
        raise UserError(f"unknown expression preset {name!r}; choose from {sorted(PRESETS)}")
    if frames < 1:
        raise UserError(f"a preset needs at least 1 frame, got {frames}")
    expression = _weights(head, frames, PRESETS[name])
    return DrivingSequence(expression=expression, jaw=torch.zeros(frames, JAW_DIM), source=f"preset:{name}")


# --- files and videos ---------------------------------------------------------------------------

def from_file(path: str | Path, expression_dim: int) -> DrivingSequence:
    """An expressions file (JSON or ``.npy``), see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"expressions file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy array ({exc})") from None
        if array.ndim != 2 or array.shape[1] not in (expression_dim, expression_dim + JAW_DIM):
            raise UserError(f"{path}: expected [frames, {expression_dim}] or [frames, {expression_dim + JAW_DIM}] "
                            f"(expression ++ jaw), got {list(array.shape)}")
        jaw = array[:, expression_dim:] if array.shape[1] > expression_dim else None
        return from_arrays(array[:, :expression_dim], jaw, source=str(path))
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if isinstance(document, dict) and "per_frame" in document:  # `avatar4d track` output
        frames = [f["coefficients"] for f in document["per_frame"] if f.get("face")]
        if not frames:
            raise UserError(f"{path}: the tracking file has no frame with a face")
        fps = document.get("fps")
        sequence = from_arrays([f["expression"] for f in frames], [f["jaw"] for f in frames], source=str(path))
        sequence.fps = float(fps) if isinstance(fps, (int, float)) and math.isfinite(fps) else None
        return sequence
    if not isinstance(document, dict) or "expression" not in document:
        raise UserError(f"{path}: expected {{\"expression\": [[...], ...], \"jaw\": [[...], ...]}} or a tracking.json")
    return from_arrays(document["expression"], document.get("jaw"), source=str(path))


def from_video(path: str | Path, head: MorphableModel, *, max_frames: int, device: str = "cpu",
               progress: bool = False) -> DrivingSequence:
    """Track every frame of a driving video (frames without a face hold the previous frame's values)."""
    from avatar4d.tracking.landmarks import RegressorDetector
    from avatar4d.tracking.media import read_media
    from avatar4d.tracking.tracker import Tracker, centre_square

    media = read_media(path, max_frames=max_frames, progress=progress)
    frames, _ = centre_square(media.frames)
    result = Tracker(head, RegressorDetector(device=device)).track(frames, video=media.is_video)
    expression, jaw = result.fit.params.expression.detach().cpu(), result.fit.params.jaw.detach().cpu()
    present = result.detections.present.cpu()
    for index in range(expression.shape[0]):  # hold the last tracked values over frames without a face
        if not present[index]:
            source = index - 1 if index > 0 else int(torch.nonzero(present)[0])
            expression[index], jaw[index] = expression[source], jaw[source]
    return DrivingSequence(expression=expression, jaw=jaw, fps=media.fps, source=str(path))
