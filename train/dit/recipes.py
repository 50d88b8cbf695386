"""DiT training runs as recipes: ``tiny`` (CPU) and ``paper`` (AvatarArtist §3.3).

Paper (DESIGN.md "DiT"): IDDPM objective with learned variance, linear 1000-step schedule,
condition dropped with p = 0.1 (classifier-free guidance); AdamW lr 1e-4, weight decay 3e-2,
eps 1e-10, 500 warm-up steps, EMA 0.9999, gradient clipping 1; batch 1536 on 48 A100s (48 workers
× 32 here), 800k steps. Sample grids use DPM-Solver++ with 19 steps and guidance 4.5.

The DiT reads the precomputed ``<data>/encoded.lance`` (CLIP tokens, DINO tokens, scaled VAE
latents; see :mod:`train.dit.task`). ``fit_model_to_data`` (tiny) takes the latent grid and the
token counts/widths from the dataset instead of the preset; ``paper`` insists they match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from avatar4d.config import ConfigError
from avatar4d.diffusion import DiffusionConfig, SamplingConfig
from avatar4d.models.dit import DIT_PRESETS, DiTConfig
from train.config import TrainConfig
from train.task import TaskConfig


@dataclasses.dataclass
class DiTTrainConfig(TaskConfig):
    """A complete DiT training run.

    ``vae_checkpoint`` (optional): the VAE whose latents the dataset holds; with it (and generator
    checkpoints under ``generators``, default ``<data>/generators``) the sample grids also show
    renders of the decoded samples (``preview_render_resolution`` px, frontal camera).
    ``gradient_checkpointing`` recomputes blocks in backward.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "train.storage_path", "vae_checkpoint", "generators")

    task: str = "dit"
    model: DiTConfig = dataclasses.field(default_factory=lambda: DIT_PRESETS.get("tiny"))
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    fit_model_to_data: bool = False
    gradient_checkpointing: bool = False
    vae_checkpoint: str | None = None
    generators: list[str] = dataclasses.field(default_factory=list)
    preview_samples: int = 4
    preview_render_resolution: int = 32

    def __post_init__(self) -> None:
        if self.task != "dit":
            raise ConfigError(f"a DiT training config has task 'dit', got {self.task!r}")
        if self.model.learn_sigma != self.diffusion.learn_sigma:
            raise ConfigError("model.learn_sigma and diffusion.learn_sigma must agree")
        if abs(self.model.condition_dropout - self.diffusion.condition_drop_prob) > 1e-12:
            raise ConfigError(f"model.condition_dropout ({self.model.condition_dropout}) and "
                              f"diffusion.condition_drop_prob ({self.diffusion.condition_drop_prob}) must agree")
        if self.preview_samples < 1 or self.preview_render_resolution < 4:
            raise ConfigError("preview_samples must be >= 1 and preview_render_resolution >= 4")


def tiny() -> DiTTrainConfig:
    """CPU size: the tiny DiT fitted to the dataset's latent grid and token shapes, 2 workers × 4
    samples, ZeRO-2, fp32, lr 2e-3 (paper's wd/eps/clip), 10 warm-up steps, 80 steps, 8-step
    DPM-Solver++ sample grids with guidance 1.5.

    v-prediction instead of the paper's ε: with a CPU budget of hundreds of steps an ε network
    never becomes accurate enough at high noise for the solver's first steps (x̂_0 divides ε̂'s
    error by √ᾱ_999 ≈ 0.006), and its samples of held-out portraits stayed at 5-10 dB; with v they
    reach 17.7 dB in 750 steps (tests/integration/test_learning.py). Guidance 1.5: the measured
    optimum at that budget (1.0: 17.7 dB, 1.5: 17.6 dB, 3.0: 16.4 dB, 4.5: 14.6 dB); the paper's 4.5
    is for a model trained 800k steps."""
    return DiTTrainConfig(
        model=DIT_PRESETS.get("tiny"), fit_model_to_data=True,
        diffusion=DiffusionConfig(prediction_type="v_prediction"),
        sampling=SamplingConfig(scheduler="dpmsolver++", steps=8, guidance_scale=1.5),
        train=TrainConfig(num_workers=2, zero_stage=2, micro_batch_size=4, steps=80, lr=2e-3, weight_decay=3e-2,
                          eps=1e-10, warmup_steps=10, grad_clip=1.0, ema_decay=0.9, checkpoint_every=20,
                          log_every=5, image_every=0, max_failures=1),
        preview_samples=4)


def paper() -> DiTTrainConfig:
    """The paper's DiT training (batch 1536 = 48 workers × 32, 800k steps, bf16 on GPUs)."""
    return DiTTrainConfig(
        model=DIT_PRESETS.get("paper"), fit_model_to_data=False,
        sampling=SamplingConfig(scheduler="dpmsolver++", steps=19, guidance_scale=4.5),
        train=TrainConfig(num_workers=48, zero_stage=2, micro_batch_size=32, steps=800_000, lr=1e-4,
                          weight_decay=3e-2, eps=1e-10, warmup_steps=500, grad_clip=1.0, ema_decay=0.9999,
                          checkpoint_every=5_000, log_every=100, image_every=5_000, max_failures=10,
                          data_workers=2),
        preview_samples=4, preview_render_resolution=128)


RECIPES: dict[str, Callable[[], DiTTrainConfig]] = {"tiny": tiny, "paper": paper}


def get_recipe(name: str) -> DiTTrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown DiT recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]()
