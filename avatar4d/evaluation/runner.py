"""One evaluation run: driving clips from a dataset or a folder of videos, every avatar maker
through the protocol, one report. ``avatar4d eval`` and the Ray fan-out (``factory.evaluate``) both
run it; the latter hands shares of the cases to workers and merges their partial results."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.data.schema import MULTIVIEW, dataset_uri
from avatar4d.errors import UserError
from avatar4d.evaluation.clips import DrivingClip, ReenactmentCase, make_cases
from avatar4d.evaluation.protocol import AvatarMaker, CaseResult, PartialResult, evaluate_cases, summarise
from avatar4d.evaluation.report import EvalReport, ModelResult
from avatar4d.metrics.config import METRIC_PRESETS, MetricsConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalConfig(Config):
    """``identities``: dynamic multiview identities (or videos) evaluated, spread over domains
    (None = all); ``views``: frames per clip (the first is the source portrait); ``cross``: also
    cross-reenactment; ``video_resolution``: real videos are resized to this square."""

    metrics: MetricsConfig = dataclasses.field(default_factory=lambda: METRIC_PRESETS.get("tiny"))
    identities: int | None = 6
    views: int | None = 8
    cross: bool = True
    samples_per_task: int = 2
    video_resolution: int = 64
    video_max_frames: int = 64
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.identities is not None and self.identities < 1:
            raise ConfigError(f"identities must be >= 1, got {self.identities}")
        if self.views is not None and self.views < 2:
            raise ConfigError(f"views must be >= 2 (a source and a driving frame), got {self.views}")


EVAL_PRESETS: PresetRegistry[EvalConfig] = PresetRegistry("evaluation")


@EVAL_PRESETS.register("tiny")
def _tiny() -> EvalConfig:
    """Random metric networks, 6 identities × 8 views: a CPU check in about a minute."""
    return EvalConfig()


@EVAL_PRESETS.register("paper")
def _paper() -> EvalConfig:
    """The published metric networks (local weights), every identity and view, 512² videos."""
    return EvalConfig(metrics=METRIC_PRESETS.get("paper"), identities=None, views=None, video_resolution=512,
                      video_max_frames=240, device="cuda")


def load_clips(data: str | Path, config: EvalConfig) -> list[DrivingClip]:
    """World multiview sets when ``data`` holds ``multiview.lance``, else a folder of videos."""
    from avatar4d.evaluation.sources import video_clips, world_clips

    root = Path(data).expanduser()
    if not root.exists():
        raise UserError(f"evaluation data not found: {data}")
    if Path(dataset_uri(str(root), MULTIVIEW)).is_dir():
        return world_clips(root, max_identities=config.identities, max_views=config.views)
    clips = video_clips(root, resolution=config.video_resolution, max_frames=config.video_max_frames)
    return clips[:config.identities] if config.identities else clips


def make_run_cases(clips: list[DrivingClip], config: EvalConfig) -> list[ReenactmentCase]:
    return make_cases(clips, cross=config.cross)


def run_local(makers: list[AvatarMaker], cases: list[ReenactmentCase], config: EvalConfig, *,
              on_case: Callable[[CaseResult], None] | None = None, suite=None) -> list[ModelResult]:
    """Every maker over every case in this process (one metric suite, FID reset per maker)."""
    from avatar4d.metrics.suite import MetricSuite

    suite = suite or MetricSuite(config.metrics, device=config.device)
    results = []
    for maker in makers:
        suite.reset()
        part = evaluate_cases(maker, cases, suite, samples_per_task=config.samples_per_task, on_case=on_case)
        info = maker.info() if hasattr(maker, "info") else {}
        results.append(model_result(maker.name, [part], config, info=info))
    return results


def model_result(name: str, parts: list[PartialResult], config: EvalConfig, *, info: dict | None = None) -> ModelResult:
    """One model's summary over the partial results of its cases (from this process or from workers)."""
    cases = [case for part in parts for case in part.cases]
    return ModelResult(name=name, summary=summarise(parts, config.metrics), cases=cases, info=info or {})


def build_report(models: list[ModelResult], config: EvalConfig, *, data: str, preset: str, started: float,
                 extra: dict | None = None) -> EvalReport:
    meta = {"data": str(data), "eval_preset": preset, "metrics_preset": "tiny" if not config.metrics.require_pretrained
            else "paper", "identities": config.identities, "views": config.views, "cross": config.cross,
            "seconds": round(time.time() - started, 1), **EvalReport.environment(), **(extra or {})}
    return EvalReport(models=models, meta=meta)
