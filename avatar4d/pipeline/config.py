"""Typed config of the inference pipeline and its presets (``tiny``: the embedded default on a CPU;
``paper``: the release's encoders and the paper's sampling, bf16 on a GPU)."""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.diffusion.sampling import SamplingConfig

PRECISIONS = ("float32", "bfloat16")
RENDERERS = ("auto", "parametric", "motion-aware")


@dataclasses.dataclass
class PipelineConfig(Config):
    """How avatars are made and rendered.

    ``sampling``: DiT sampler (None = the one the DiT was trained with, from its checkpoint, else the
    paper's DPM-Solver++ 19 steps, guidance 4.5). ``track``: fit camera and coefficients of the
    portrait (the avatar keeps them; its identity shapes the driven meshes); without it the source
    camera is frontal and the coefficients are zero. ``render_resolution``: neural rendering size
    (None = the generator's); ``output_resolution``: frame size (None = the generator's image size).
    ``renderer``: ``auto`` takes the motion-aware renderer when the checkpoints have one, else the
    parametric rendering. Limits (``max_pixels``, ``max_frames``, ``max_batch``) bound what one call may ask for.
    """

    sampling: SamplingConfig | None = None
    track: bool = True
    renderer: str = "auto"
    seed: int = 0
    device: str = "cpu"
    precision: str = "float32"
    render_resolution: int | None = None
    output_resolution: int | None = None
    max_batch: int = 8
    max_frames: int = 240
    max_pixels: int = 4096 * 4096
    fps: float = 25.0

    def __post_init__(self) -> None:
        if self.renderer not in RENDERERS:
            raise ConfigError(f"renderer must be one of {RENDERERS}, got {self.renderer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("max_batch", "max_frames", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("render_resolution", "output_resolution"):
            value = getattr(self, name)
            if value is not None and not 8 <= value <= 2048:
                raise ConfigError(f"{name} must be in [8, 2048], got {value}")
        if not 0 < self.fps <= 120:
            raise ConfigError(f"fps must be in (0, 120], got {self.fps}")


PIPELINE_PRESETS: PresetRegistry[PipelineConfig] = PresetRegistry("inference pipeline")


@PIPELINE_PRESETS.register("tiny")
def _tiny() -> PipelineConfig:
    """CPU defaults for the tiny models: sampler from the DiT's checkpoint, fp32."""
    return PipelineConfig()


@PIPELINE_PRESETS.register("paper")
def _paper() -> PipelineConfig:
    """The paper's inference: DPM-Solver++ 19 steps, guidance 4.5, bf16 on a GPU, 512² frames."""
    return PipelineConfig(sampling=SamplingConfig(), device="cuda", precision="bfloat16", output_resolution=512)
