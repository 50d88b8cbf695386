"""Which networks the evaluation metrics use, and where their weights are: one typed config with
``tiny`` and ``paper`` presets.

``paper`` is the published protocol (LPIPS-AlexNet, FID Inception-v3 pool3 features, CLIP ViT-L/14,
ArcFace IResNet-100): every file comes from a local path (nothing is downloaded) and a missing path
is a one-line error. ``tiny`` builds small randomly initialised networks from ``init_seed`` (the
same weights on every machine): their numbers are internally consistent (identical inputs score
perfectly, the metric definitions hold) but are not comparable with published ones. PSNR, SSIM and
the motion metrics (AKD, APD, AED: the tracker's landmarks and fit; the landmark regressor ships
with avatar4d) need no weights in either preset.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, ConfigError, PresetRegistry


@dataclasses.dataclass
class LpipsConfig(Config):
    """``net``: the lpips trunk (alex, vgg, squeeze); ``backbone``: its torchvision weights file
    (``alexnet-owt-7be5be79.pth``); None with ``random_backbone`` = a random trunk."""

    net: str = "alex"
    backbone: str | None = None
    random_backbone: bool = False


@dataclasses.dataclass
class FidConfig(Config):
    """``inception_weights``: torch-fidelity's FID Inception-v3 file
    (``weights-inception-2015-12-05-6726825d.pth``), 2048-d pool3 features. None = the tiny random
    feature network (``tiny_features`` wide)."""

    inception_weights: str | None = None
    tiny_features: int = 64


@dataclasses.dataclass
class ClipScoreConfig(Config):
    """``model``: an open_clip architecture name; ``checkpoint``: its local weights file
    (``open_clip_pytorch_model.bin``). None = a tiny random vision tower (``tiny_*`` sizes)."""

    model: str = "ViT-L-14"
    checkpoint: str | None = None
    tiny_width: int = 32
    tiny_layers: int = 2
    tiny_image_size: int = 32
    tiny_patch_size: int = 8
    tiny_output_dim: int = 32


@dataclasses.dataclass
class IdentityConfig(Config):
    """ArcFace-style IResNet (insightface ``arcface_torch`` layout). ``checkpoint``: its
    ``backbone.pth`` state dict (IResNet-100 for ``paper``); None = random weights of these sizes."""

    layers: tuple[int, int, int, int] = (3, 13, 30, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    input_size: int = 112
    embedding_size: int = 512
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.input_size % 16:
            raise ConfigError(f"identity: input_size must be a multiple of 16, got {self.input_size}")


@dataclasses.dataclass
class MetricsConfig(Config):
    """All metric networks. ``require_pretrained``: refuse random weights (the ``paper`` preset).
    ``landmark_resolution``: AKD is reported in pixels of an image this wide (the paper's 512²)."""

    lpips: LpipsConfig = dataclasses.field(default_factory=LpipsConfig)
    fid: FidConfig = dataclasses.field(default_factory=FidConfig)
    clip: ClipScoreConfig = dataclasses.field(default_factory=ClipScoreConfig)
    identity: IdentityConfig = dataclasses.field(default_factory=IdentityConfig)
    require_pretrained: bool = False
    init_seed: int = 0
    landmark_resolution: int = 512

    def missing_weights(self) -> list[str]:
        """Names of the weight files a ``require_pretrained`` config lacks."""
        missing = []
        if self.lpips.backbone is None and not self.lpips.random_backbone:
            missing.append("lpips.backbone")
        for name, value in (("fid.inception_weights", self.fid.inception_weights),
                            ("clip.checkpoint", self.clip.checkpoint),
                            ("identity.checkpoint", self.identity.checkpoint)):
            if value is None:
                missing.append(name)
        return missing


METRIC_PRESETS: PresetRegistry[MetricsConfig] = PresetRegistry("metrics")


@METRIC_PRESETS.register("paper")
def _paper() -> MetricsConfig:
    """The published networks; set every path (``lpips.backbone``, ``fid.inception_weights``,
    ``clip.checkpoint``, ``identity.checkpoint``)."""
    return MetricsConfig(require_pretrained=True)


@METRIC_PRESETS.register("tiny")
def _tiny() -> MetricsConfig:
    """Random CPU-size networks (seconds per evaluation; nothing to download)."""
    return MetricsConfig(lpips=LpipsConfig(random_backbone=True),
                         identity=IdentityConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 32), input_size=32,
                                                 embedding_size=32))
