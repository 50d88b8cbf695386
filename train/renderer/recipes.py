"""Renderer training runs as recipes: ``tiny`` (CPU) and ``paper`` (AvatarArtist §3.3).

Paper (DESIGN.md "Motion-aware cross-domain renderer"): loss L_re (LPIPS + L1 on the final and the raw
image) + L_f (L1 on rendering features) + 0.1 L_tri + L_depth + L_opa + 0.01 L_adv (dual discriminator,
R1 and density regulariser); for the first 1M images no adversarial term and the neural renderer
(OSG decoder) and super-resolution frozen; neural resolution 64² → 128²; Adam lr 1e-4; batch 96, half
static and half dynamic multiview samples; initialised from a domain generator (decoder + SR).

``input_downsample`` (tiny: 8): the parametric triplane the renderer reads is blurred (average-pooled
and upsampled by this factor). At inference the triplane comes from the DiT and lacks detail the
portrait has; on the procedural world, where the clean triplane rendered through the target mesh *is*
the ground truth, this gives the renderer the same job: recover the source's detail (eyes, brows,
lips, patterns) in the target expression and view. 8 makes the un-refined rendering about as good as
the tiny VAE's reconstructions (measured on held-out world pairs: 20.5 dB vs the VAE's 20.8 dB; 4: 27.6 dB,
16: 12.1 dB, 1: 50 dB, i.e. exact). 1 = the dataset's triplane as it is (``paper``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from avatar4d.config import Config, ConfigError
from avatar4d.models.discriminator import DISCRIMINATOR_PRESETS, DualDiscriminatorConfig
from avatar4d.models.renderer import MOTION_ENCODER_PRESETS, RENDERER_PRESETS, MotionEncoderConfig, RendererConfig
from train.config import TrainConfig
from train.task import TaskConfig


@dataclasses.dataclass
class RendererLossConfig(Config):
    """Loss weights and switches. Image counts are samples seen over all ranks (``train.samples_per_step``
    per step). ``lpips_*`` as the VAE's (``lpips_random_backbone`` for tests / the tiny recipe)."""

    l1: float = 1.0
    lpips: float = 1.0
    features: float = 1.0
    triplane: float = 0.1
    depth: float = 1.0
    opacity: float = 1.0
    adversarial: float = 0.01
    r1_gamma: float = 1.0
    density_reg: float = 0.25
    density_reg_points: int = 1000
    freeze_images: int = 1_000_000          # decoder + SR frozen and no adversarial term before this
    high_resolution_images: int = 1_000_000  # neural resolution low → high after this
    low_resolution: int = 64
    high_resolution: int = 128
    lpips_net: str = "vgg"
    lpips_backbone: str | None = None
    lpips_random_backbone: bool = False
    lpips_min_resolution: int = 64
    input_downsample: int = 1

    def __post_init__(self) -> None:
        weights = (self.l1, self.lpips, self.features, self.triplane, self.depth, self.opacity, self.adversarial,
                   self.r1_gamma, self.density_reg)
        if min(weights) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.freeze_images < 0 or self.high_resolution_images < 0:
            raise ConfigError("image counts must be >= 0")
        if self.input_downsample < 1 or self.low_resolution < 4 or self.high_resolution < self.low_resolution:
            raise ConfigError("input_downsample must be >= 1 and 4 <= low_resolution <= high_resolution")


@dataclasses.dataclass
class RendererTrainConfig(TaskConfig):
    """A complete renderer training run: the renderer, its motion encoder, the discriminator, the loss."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "train.storage_path", "loss.lpips_backbone",
                                              "init_generator", "motion_encoder.path")
    task: str = "renderer"
    model: RendererConfig = dataclasses.field(default_factory=lambda: RENDERER_PRESETS.get("tiny"))
    motion_encoder: MotionEncoderConfig = dataclasses.field(default_factory=lambda: MOTION_ENCODER_PRESETS.get("tiny"))
    discriminator: DualDiscriminatorConfig = dataclasses.field(
        default_factory=lambda: DISCRIMINATOR_PRESETS.get("tiny"))
    loss: RendererLossConfig = dataclasses.field(default_factory=RendererLossConfig)
    init_generator: str = ""                # domain generator checkpoint (decoder + SR); "": the data's first
    preview_samples: int = 4

    def __post_init__(self) -> None:
        if self.task != "renderer":
            raise ConfigError(f"a renderer training config has task 'renderer', got {self.task!r}")
        if self.motion_encoder.motion_dim != self.model.motion_dim:
            raise ConfigError(f"motion_encoder.motion_dim ({self.motion_encoder.motion_dim}) must equal "
                              f"model.motion_dim ({self.model.motion_dim})")
        if self.discriminator.img_resolution != self.model.image_resolution:
            raise ConfigError(f"discriminator.img_resolution ({self.discriminator.img_resolution}) must equal the "
                              f"renderer's image resolution ({self.model.image_resolution})")
        if self.preview_samples < 1:
            raise ConfigError("preview_samples must be >= 1")


def tiny() -> RendererTrainConfig:
    """CPU: the tiny renderer on the tiny world's multiview sets, micro-batch 4 (static and dynamic rows mixed),
    ZeRO 0 (frozen parts pass zero gradients), no gradient clipping (the paper names none, and DeepSpeed's
    ZeRO-0 clipping fails on the StyleGAN layers' scalar noise strengths), lr 1e-3, EMA 0.9 as the other tiny
    recipes (the paper's 0.9999 would save weights that barely left their init in a CPU run), switches after 400 images,
    16² → 32² rendering."""
    model = RENDERER_PRESETS.get("tiny")
    return RendererTrainConfig(
        model=model,
        loss=RendererLossConfig(lpips_net="alex", lpips_random_backbone=True, lpips_min_resolution=32,
                                freeze_images=400, high_resolution_images=400, low_resolution=16,
                                high_resolution=32, density_reg_points=256, input_downsample=8),
        train=TrainConfig(steps=100, lr=1e-3, micro_batch_size=4, zero_stage=0, grad_clip=0.0, ema_decay=0.9,
                          checkpoint_every=50, log_every=10, image_every=0))


def paper() -> RendererTrainConfig:
    """The paper's run: 8 workers × 12 (96, half static / half dynamic), Adam lr 1e-4, switches at 1M images."""
    model = RENDERER_PRESETS.get("paper")
    return RendererTrainConfig(
        model=model, motion_encoder=MOTION_ENCODER_PRESETS.get("paper"),
        discriminator=DISCRIMINATOR_PRESETS.get("paper"), loss=RendererLossConfig(),
        train=TrainConfig(num_workers=8, micro_batch_size=12, lr=1e-4, steps=83_334, zero_stage=0, grad_clip=0.0,
                          checkpoint_every=1000, log_every=50, image_every=1000))


RECIPES: dict[str, Callable[[], RendererTrainConfig]] = {"tiny": tiny, "paper": paper}


def get_recipe(name: str) -> RendererTrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown renderer recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]()
