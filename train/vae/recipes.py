"""VAE training runs as recipes: ``tiny`` (CPU, seconds per step) and ``paper`` (AvatarArtist §3.2).

Paper and official code (DESIGN.md "Triplane VAE"): loss = L1 triplane (1) + L1 depth (1), both summed
over each sample and averaged over the batch, + LPIPS on rendered images (1) + latent total variation
(2e-3) + KL (1e-5), no adversarial loss; rendering cameras with pitch in [−0.25, 0.65], yaw in
[−0.78, 0.78], roll in [−0.25, 0.25] rad; AdamW lr 1e-4, batch 32, 100k steps. The batch of 32 is
8 workers × 4 samples here. The paper does not name the LPIPS backbone; ``paper`` uses VGG16
(the usual choice for reconstruction losses) from a local torchvision weights file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from avatar4d.config import Config, ConfigError
from avatar4d.geometry.camera import PoseSamplerConfig
from avatar4d.models.vae import VAE_PRESETS, TriplaneVAEConfig
from avatar4d.models.vae.statistics import STATISTICS_GRANULARITIES
from train.config import TrainConfig
from train.task import TaskConfig

LPIPS_NETS = ("alex", "vgg", "squeeze")


@dataclasses.dataclass
class VAELossConfig(Config):
    """Weights and rendering of the VAE loss.

    ``render_resolution``: side of the neural renders compared by LPIPS and depth L1 (upsampled to
    ``lpips_min_resolution`` for LPIPS, whose AlexNet trunk needs at least ~32 px).
    ``lpips_backbone``: local torchvision weights of the LPIPS trunk (``features.*`` keys of
    alexnet / vgg16 / squeezenet1_1); ``lpips_random_backbone`` allows a randomly initialised trunk
    instead (tests, the tiny recipe). LPIPS's linear calibration layers ship inside the ``lpips``
    wheel. ``generators``: folders searched for the domains' generator checkpoints (empty: the data
    folder's ``generators/``). ``statistics_rows``: size of the seeded sample of the whole dataset
    that estimates the triplane normalisation (when the model normalises triplanes) and, after
    training, the latent scale. ``statistics``: ``plane`` (the release's per-plane mean/std, default)
    or ``plane_channel``. ``estimate_latent_scale``: store 1 / std of the trained VAE's latents as
    its ``latent_scale_factor`` (off: keep the config's value, the release's 0.3994218).
    """

    triplane_l1: float = 1.0
    depth_l1: float = 1.0
    lpips: float = 1.0
    kl: float = 1e-5                    # the paper's "1×10⁻⁵" and the official code's kl_weight
    latent_tv: float = 2e-3             # official: total variation of the posterior mean
    reduction: str = "sum"              # "sum": L1 terms summed per sample, averaged over the batch (official); "mean"
    render_resolution: int = 128
    lpips_min_resolution: int = 64
    lpips_net: str = "vgg"
    lpips_backbone: str | None = None
    lpips_random_backbone: bool = False
    views_per_sample: int = 1
    compose_expression: bool = True
    cameras: PoseSamplerConfig = dataclasses.field(default_factory=PoseSamplerConfig)
    generators: list[str] = dataclasses.field(default_factory=list)
    statistics_rows: int = 64
    statistics: str = "plane"
    estimate_latent_scale: bool = True

    def __post_init__(self) -> None:
        if min(self.triplane_l1, self.depth_l1, self.lpips, self.kl, self.latent_tv) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction must be 'sum' (official) or 'mean', got {self.reduction!r}")
        if self.lpips_net not in LPIPS_NETS:
            raise ConfigError(f"lpips_net must be one of {list(LPIPS_NETS)}, got {self.lpips_net!r}")
        if self.render_resolution < 4 or self.lpips_min_resolution < 32:
            raise ConfigError("render_resolution must be >= 4 and lpips_min_resolution >= 32")
        if self.views_per_sample < 1 or self.statistics_rows < 1:
            raise ConfigError("views_per_sample and statistics_rows must be >= 1")
        if self.statistics not in STATISTICS_GRANULARITIES:
            raise ConfigError(f"statistics must be one of {list(STATISTICS_GRANULARITIES)}, got {self.statistics!r}")

    @property
    def renders(self) -> bool:
        return self.depth_l1 > 0 or self.lpips > 0


@dataclasses.dataclass
class VAETrainConfig(TaskConfig):
    """A complete VAE training run: shared options, the model and the loss."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "train.storage_path", "loss.lpips_backbone", "loss.generators")

    task: str = "vae"
    model: TriplaneVAEConfig = dataclasses.field(default_factory=lambda: VAE_PRESETS.get("tiny"))
    loss: VAELossConfig = dataclasses.field(default_factory=VAELossConfig)
    preview_samples: int = 4

    def __post_init__(self) -> None:
        if self.task != "vae":
            raise ConfigError(f"a VAE training config has task 'vae', got {self.task!r}")
        if self.preview_samples < 1:
            raise ConfigError("preview_samples must be >= 1")


def tiny() -> VAETrainConfig:
    """CPU size (the tiny factory's 4 × 8 × 64² triplanes → 8 × 4 × 16² latents): 2 workers × 2
    samples, ZeRO-2, fp32, 60 steps, AdamW lr 2e-3 for the 22,650-parameter model (measured on
    procedural-world pairs, batch 4, triplane L1: held-out MSE 0.38× the per-plane mean's after 300
    steps; 0.52× at lr 3e-4). Every paper loss term, at CPU cost: renders of the static planes (no
    expression composition, which rasterizes the head mesh twice per generator and micro-batch) at 16²,
    LPIPS with a random AlexNet trunk at its 32² minimum; ≥ 5 steps/s at micro-batch 4 on one CPU
    thread (benchmarks/results/tiny_steps.md)."""
    return VAETrainConfig(
        model=VAE_PRESETS.get("tiny", normalize_triplanes=True),
        loss=VAELossConfig(render_resolution=16, lpips_min_resolution=32, lpips_net="alex",
                           lpips_random_backbone=True, compose_expression=False, statistics_rows=16),
        train=TrainConfig(num_workers=2, zero_stage=2, micro_batch_size=2, steps=60, lr=2e-3, warmup_steps=0,
                          ema_decay=0.9, checkpoint_every=20, log_every=5, image_every=0, max_failures=1),
        preview_samples=4)


def paper() -> VAETrainConfig:
    """The paper's VAE training: 8 workers × 4 = batch 32, AdamW lr 1e-4, 100k steps, bf16 on GPUs,
    renders at the generators' 128² neural resolution, LPIPS VGG16 (pass its weights file)."""
    return VAETrainConfig(
        model=VAE_PRESETS.get("paper", normalize_triplanes=True),
        loss=VAELossConfig(render_resolution=128, lpips_net="vgg", statistics_rows=256),
        train=TrainConfig(num_workers=8, zero_stage=2, micro_batch_size=4, steps=100_000, lr=1e-4,
                          warmup_steps=500, ema_decay=0.9999, checkpoint_every=2_000, log_every=50,
                          image_every=2_000, max_failures=3, data_workers=2),
        preview_samples=4)


RECIPES: dict[str, Callable[[], VAETrainConfig]] = {"tiny": tiny, "paper": paper}


def get_recipe(name: str) -> VAETrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown VAE recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]()
