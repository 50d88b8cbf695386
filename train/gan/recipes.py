"""Per-domain GAN fine-tuning runs as recipes: ``tiny`` (CPU) and ``paper`` (AvatarArtist §3.1).

Paper (DESIGN.md "Per-domain fine-tune"): from the FFHQ Next3D GAN, ADA + R1 (γ = 5), density
regulariser 0.25, lr 0.002 for G and D, batch 32, stop after 200k images, blurred D input with
decreasing blur, no style mixing. EG3D's other settings are kept: Adam betas (0, 0.99), lazy R1
every 16 and density regularisation every 4 steps, density points perturbed by 0.004, ADA target
0.6 adjusted every 4 steps (p from 0 to 1 in 500k images), G EMA over 10k images (decay
0.5^(32/10,000) at batch 32), D-input blur from σ = 10 px fading over the 200k images.

Parallelism: data parallel over Ray Train workers (one GPU each), DeepSpeed ZeRO stage 1. The
Next3D generator (88M parameters) and the discriminator fit on one GPU many times over, so
splitting the model (ZeRO-3, tensor or pipeline parallelism) would only add communication; the
batch is what scales (32 = 8 workers × 4). Stage 1 shards the Adam states of each part; the
generator and the discriminator are separate DeepSpeed engines (:meth:`TrainTask.optimized_parts`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

from avatar4d.config import Config, ConfigError
from avatar4d.models.discriminator import DISCRIMINATOR_PRESETS, DualDiscriminatorConfig
from avatar4d.models.next3d import GENERATOR_PRESETS
from avatar4d.models.next3d.config import GeneratorConfig
from train.config import TrainConfig
from train.task import TaskConfig


@dataclasses.dataclass
class GANLossConfig(Config):
    """Regularisers and blur of the fine-tune (see :mod:`train.gan.losses`)."""

    r1_gamma: float = 5.0
    r1_interval: int = 16
    density_reg: float = 0.25
    density_interval: int = 4
    density_points: int = 1000
    density_p_dist: float = 0.004
    blur_init_sigma: float = 10.0
    blur_fade_images: int = 200_000

    def __post_init__(self) -> None:
        if self.r1_gamma < 0 or self.density_reg < 0 or self.blur_init_sigma < 0 or self.density_p_dist < 0:
            raise ConfigError("r1_gamma, density_reg, blur_init_sigma and density_p_dist must be >= 0")
        if min(self.r1_interval, self.density_interval, self.density_points) < 1 or self.blur_fade_images < 0:
            raise ConfigError("r1_interval, density_interval and density_points must be >= 1, blur_fade_images >= 0")


@dataclasses.dataclass
class ADAConfig(Config):
    """Adaptive augmentation: which transforms, the target of E[sign D(real)], the adjustment cadence
    and speed (images for p to move by 1), the starting p."""

    enabled: bool = True
    xflip: bool = True
    translate: bool = True
    color: bool = True
    target: float = 0.6
    interval: int = 4
    speed_images: int = 500_000
    initial_p: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.target < 1 or self.interval < 1 or self.speed_images < 1 or not 0 <= self.initial_p <= 1:
            raise ConfigError("ADA needs 0 < target < 1, interval >= 1, speed_images >= 1, 0 <= initial_p <= 1")


@dataclasses.dataclass
class GANTrainConfig(TaskConfig):
    """A complete fine-tune of one domain's GAN.

    ``domain``: the rows of ``<data>/stylized.lance`` trained on. ``base_checkpoint``: the generator
    fine-tuned (an avatar4d Next3D checkpoint, e.g. the converted FFHQ GAN); empty: the
    ``generator`` config randomly initialised from the run seed. ``base_discriminator``: optional
    avatar4d discriminator checkpoint (else a random one). ``images``: stop after this many
    images (sets ``train.steps`` from the global batch; 0 keeps ``train.steps``). ``g_lr`` /
    ``d_lr`` / ``betas``: the two Adam optimisers.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "train.storage_path", "base_checkpoint", "base_discriminator")

    task: str = "gan"
    domain: str = ""
    base_checkpoint: str = ""
    base_discriminator: str = ""
    generator: GeneratorConfig = dataclasses.field(default_factory=lambda: GENERATOR_PRESETS.get("tiny"))
    discriminator: DualDiscriminatorConfig = dataclasses.field(
        default_factory=lambda: DISCRIMINATOR_PRESETS.get("tiny"))
    loss: GANLossConfig = dataclasses.field(default_factory=GANLossConfig)
    ada: ADAConfig = dataclasses.field(default_factory=ADAConfig)
    images: int = 0
    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    preview_samples: int = 4
    statistics_rows: int = 64

    def __post_init__(self) -> None:
        if self.task != "gan":
            raise ConfigError(f"a GAN training config has task 'gan', got {self.task!r}")
        if self.images < 0 or self.g_lr <= 0 or self.d_lr <= 0:
            raise ConfigError("images must be >= 0 and g_lr, d_lr > 0")
        if self.preview_samples < 1 or self.statistics_rows < 1:
            raise ConfigError("preview_samples and statistics_rows must be >= 1")

    def with_defaults(self, recipe: str) -> GANTrainConfig:
        """Run name ``gan-<domain>-<recipe>`` and registered model ``avatar4d-gan-<domain>``."""
        if self.domain:
            train = self.train
            updates = {}
            if not train.run_name:
                updates["run_name"] = f"gan-{self.domain}-{recipe}"
            if not train.registered_model:
                updates["registered_model"] = f"avatar4d-gan-{self.domain}"
            if updates:
                return self.replace(train=train.replace(**updates))  # type: ignore[return-value]
        return super().with_defaults(recipe)  # type: ignore[return-value]

    def steps_for_images(self) -> int:
        """``train.steps`` that stop after ``images`` images (at least one step)."""
        return max(1, math.ceil(self.images / self.train.samples_per_step))


def tiny() -> GANTrainConfig:
    """CPU size: the tiny Next3D GAN (64² images, 16² neural rendering) and tiny dual D, 2 workers ×
    4 images, ZeRO-1, fp32, 1,600 images (200 steps); R1 every 4 steps and density every 2 (short
    runs), 64 density points, blur from 2 px fading over the run, ADA target 0.6 moving p by 1 in
    20k images, G EMA decay 0.95."""
    return GANTrainConfig(
        loss=GANLossConfig(r1_interval=4, density_interval=2, density_points=64, blur_init_sigma=2.0,
                           blur_fade_images=1_600),
        ada=ADAConfig(speed_images=20_000),
        images=1_600,
        train=TrainConfig(num_workers=2, zero_stage=1, micro_batch_size=4, steps=200, lr=0.002, betas=(0.0, 0.99),
                          grad_clip=0.0, ema_decay=0.95, checkpoint_every=100, log_every=10, image_every=0,
                          max_failures=1))


def paper() -> GANTrainConfig:
    """The paper's fine-tune: paper-size Next3D G and dual D, batch 32 = 8 workers × 4, 200k images
    (6,250 steps), bf16 on GPUs."""
    return GANTrainConfig(
        generator=GENERATOR_PRESETS.get("paper"), discriminator=DISCRIMINATOR_PRESETS.get("paper"),
        images=200_000,
        train=TrainConfig(num_workers=8, zero_stage=1, micro_batch_size=4, steps=6_250, lr=0.002, betas=(0.0, 0.99),
                          grad_clip=0.0, ema_decay=0.5 ** (32 / 10_000), checkpoint_every=500, log_every=50,
                          image_every=500, max_failures=5, data_workers=0),
        preview_samples=8)


RECIPES: dict[str, Callable[[], GANTrainConfig]] = {"tiny": tiny, "paper": paper}


def get_recipe(name: str) -> GANTrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown GAN recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]()
