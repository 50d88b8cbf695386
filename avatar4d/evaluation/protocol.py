"""The reenactment protocol: make an avatar from each case's source portrait, drive it with the
case's driving signal from the driving frames' cameras, and score the frames (:mod:`avatar4d.metrics`).

Anything that turns a portrait into a drivable avatar plugs in as an :class:`AvatarMaker` (the
inference pipeline; a model under test). :func:`evaluate_cases` runs cases one by one and returns
per-case results plus the metric networks' FID moments, so shares of the cases can run on other
processes (Ray workers) and be merged by :func:`summarise`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from avatar4d.evaluation.clips import ReenactmentCase
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams
from avatar4d.metrics.config import MetricsConfig
from avatar4d.metrics.fid import FrechetDistance
from avatar4d.metrics.motion import nanmean
from avatar4d.metrics.suite import MetricSuite

logger = logging.getLogger(__name__)

#: the metrics of each task, in the paper's table-1 order first, then the extra columns
COLUMNS = {"self": ("lpips", "fid", "id", "aed", "apd", "psnr", "ssim", "akd", "face_found"),
           "cross": ("fid", "clip", "akd", "apd", "aed", "face_found")}
#: lower is better for these; higher for the others
LOWER_IS_BETTER = frozenset({"lpips", "fid", "aed", "apd", "akd"})
SAMPLE_FRAMES = 4


class AvatarMaker(Protocol):
    """Portrait → avatar → frames. ``create`` takes a portrait [3, H, W] float in [0, 1]; ``drive``
    renders the avatar with per-frame coefficients and cameras (batch T) → frames [T, 3, h, w] in [0, 1]."""

    name: str

    def create(self, portrait: Tensor) -> Any: ...

    def drive(self, avatar: Any, params: FaceParams, camera: Camera) -> Tensor: ...


@dataclasses.dataclass
class CaseResult:
    task: str
    name: str
    source_domain: str
    driving_domain: str
    frames: int
    metrics: dict[str, float]
    seconds: float
    sample: np.ndarray | None = None  # uint8 [H, W, 3]: source | driving | generated


@dataclasses.dataclass
class PartialResult:
    """What one process evaluated: its cases and the FID moments of each task."""

    cases: list[CaseResult]
    fid_states: dict[str, dict[str, Tensor]]


def _resize(frames: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(frames.shape[-2:]) == size:
        return frames
    return torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False,
                                           antialias=True)


def _sample_sheet(case: ReenactmentCase, driving: Tensor, generated: Tensor) -> np.ndarray:
    from avatar4d.viz import labelled_grid

    count = min(SAMPLE_FRAMES, driving.shape[0])
    blank = torch.ones_like(driving[:1])
    source = _resize(case.source, tuple(driving.shape[-2:]))
    row_driving = torch.cat([source, driving[:count]])
    row_generated = torch.cat([blank, generated[:count]])
    labels = ["truth" if case.task == "self" else "driving", "generated"]
    return labelled_grid(torch.cat([row_driving, row_generated]).clamp(0, 1), nrow=count + 1, row_labels=labels,
                         col_labels=["source"] + [f"frame {i + 1}" for i in range(count)], min_cell=96)


def evaluate_case(maker: AvatarMaker, case: ReenactmentCase, suite: MetricSuite, *, sample: bool = True) -> CaseResult:
    start = time.perf_counter()
    indices = case.driving_indices()
    driving, params, camera = case.driving_clip.select(indices)
    with torch.no_grad():
        avatar = maker.create(case.source[0])
        generated = maker.drive(avatar, params, camera).float().cpu()  # [T, 3, h, w]
    if generated.shape[0] != len(indices):
        raise RuntimeError(f"{maker.name} returned {generated.shape[0]} frames for {len(indices)} driving frames")
    reference = _resize(driving, tuple(generated.shape[-2:]))  # scored at the avatar's frame size
    source = _resize(case.source, tuple(generated.shape[-2:]))
    if case.task == "self":
        per_frame = suite.self_reenactment(source, generated, reference)
    else:
        per_frame = suite.cross_reenactment(source, generated, reference)
    metrics = {name: nanmean(values) for name, values in per_frame.items()}
    return CaseResult(task=case.task, name=case.name, source_domain=case.source_clip.domain,
                      driving_domain=case.driving_clip.domain, frames=len(indices), metrics=metrics,
                      seconds=time.perf_counter() - start,
                      sample=_sample_sheet(case, reference, generated) if sample else None)


def evaluate_cases(maker: AvatarMaker, cases: Iterable[ReenactmentCase], suite: MetricSuite, *,
                   samples_per_task: int = 3,
                   on_case: Callable[[CaseResult], None] | None = None) -> PartialResult:
    """Every case in order (sample sheets for the first ``samples_per_task`` of each task)."""
    results: list[CaseResult] = []
    shown: dict[str, int] = {}
    for case in cases:
        sample = shown.get(case.task, 0) < samples_per_task
        result = evaluate_case(maker, case, suite, sample=sample)
        shown[case.task] = shown.get(case.task, 0) + int(sample)
        logger.info("%s: %s (%.1f s)", case.name, {k: round(v, 4) for k, v in result.metrics.items()}, result.seconds)
        results.append(result)
        if on_case is not None:
            on_case(result)
    return PartialResult(cases=results, fid_states={task: fid.state() for task, fid in suite.fids.items()})


def summarise(parts: list[PartialResult], config: MetricsConfig) -> dict[str, dict[str, float]]:
    """Per task: each metric averaged over its cases weighted by frames (NaN-aware), FID over all
    frames of the task (the moments of every part merged), and the numbers of cases and frames."""
    cases = [case for part in parts for case in part.cases]
    out: dict[str, dict[str, float]] = {}
    for task, columns in COLUMNS.items():
        mine = [c for c in cases if c.task == task]
        if not mine:
            continue
        row: dict[str, float] = {}
        for column in columns:
            if column == "fid":
                continue
            pairs = [(c.metrics.get(column, math.nan), c.frames) for c in mine]
            pairs = [(v, w) for v, w in pairs if not math.isnan(v)]
            row[column] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else math.nan
        fid = FrechetDistance.from_config(config.fid, seed=config.init_seed)
        for part in parts:
            if task in part.fid_states:
                fid.merge(part.fid_states[task])
        try:
            row["fid"] = fid.compute()
        except ValueError:
            row["fid"] = math.nan
        row["cases"], row["frames"] = float(len(mine)), float(sum(c.frames for c in mine))
        out[task] = {column: row[column] for column in (*columns, "cases", "frames") if column in row}
    return out
