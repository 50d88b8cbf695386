"""Motion encoders: a driving image → an implicit motion embedding [B, D] (a vector, no spatial map).

Two kinds, chosen by :class:`MotionEncoderConfig.kind`:

* ``learned`` — a convolutional encoder trained jointly with the renderer: the image is resized to
  ``input_resolution``, stride-2 convs (LeakyReLU) bring it to 4 × 4, and one linear layer maps the
  flattened features to ``motion_dim``. Only a vector leaves the encoder, so the renderer cannot copy
  the driving face's appearance (no identity leakage through a spatial map).
* ``torchscript`` — a user-supplied pretrained encoder (the release drives its renderer with PD-FGC's
  548-d motion: eyes, emotion, mouth and head pose) exported as a TorchScript archive at a local
  ``path``; it is loaded with ``torch.jit.load`` (no pickled Python runs), frozen, and must map
  [B, 3, H, W] in [-1, 1] to [B, motion_dim].
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.config import Config, PresetRegistry
from avatar4d.errors import UserError
from avatar4d.rendering.parametric import resize

logger = logging.getLogger(__name__)

MOTION_ENCODER_KINDS = ("learned", "torchscript")


@dataclasses.dataclass
class MotionEncoderConfig(Config):
    """``learned``: convs of ``widths`` (stride 2 each) from ``input_resolution`` to 4² then a linear layer;
    ``torchscript``: the archive at ``path`` (its output must have ``motion_dim`` values)."""

    kind: str = "learned"
    motion_dim: int = 548
    input_resolution: int = 256
    widths: tuple[int, ...] = (32, 64, 128, 256, 256, 256)
    path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in MOTION_ENCODER_KINDS:
            raise ValueError(f"motion encoder kind must be one of {MOTION_ENCODER_KINDS}, got {self.kind!r}")
        if self.kind == "torchscript" and not self.path:
            raise ValueError("a torchscript motion encoder needs `path` (a local TorchScript archive)")
        if self.kind == "learned":
            if self.input_resolution != 4 * 2 ** len(self.widths):
                raise ValueError(f"input_resolution must be 4 · 2**len(widths) = {4 * 2 ** len(self.widths)}, "
                                 f"got {self.input_resolution}")
        if self.motion_dim < 1:
            raise ValueError(f"motion_dim must be >= 1, got {self.motion_dim}")


MOTION_ENCODER_PRESETS: PresetRegistry[MotionEncoderConfig] = PresetRegistry("motion encoder")


@MOTION_ENCODER_PRESETS.register("paper")
def _paper() -> MotionEncoderConfig:
    """Learned, 256² input, 548-d output (the width of the release's PD-FGC motion)."""
    return MotionEncoderConfig()


@MOTION_ENCODER_PRESETS.register("tiny")
def _tiny() -> MotionEncoderConfig:
    """Learned, 64² input, widths 8-16-16-32, 32-d output (the tiny renderer's motion_dim)."""
    return MotionEncoderConfig(motion_dim=32, input_resolution=64, widths=(8, 16, 16, 32))


@MOTION_ENCODER_PRESETS.register("pdfgc")
def _pdfgc() -> MotionEncoderConfig:
    """A user's PD-FGC export: set ``path`` (``--set motion_encoder.path=...``)."""
    return MotionEncoderConfig(kind="torchscript", path="pdfgc_motion.pt")


class MotionEncoder(PretrainedMixin, nn.Module, component="motion_encoder"):
    """Driving image [B, 3, H, W] in [-1, 1] → motion embedding [B, motion_dim]."""

    def __init__(self, config: MotionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.external: torch.jit.ScriptModule | None = None
        if config.kind == "torchscript":
            self.external = _load_torchscript(config.path)
            return
        layers: list[nn.Module] = []
        previous = 3
        for width in config.widths:
            layers += [nn.Conv2d(previous, width, 3, 2, 1), nn.LeakyReLU(0.2)]
            previous = width
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(previous * 16, config.motion_dim)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(previous * 16))

    def forward(self, driving_image: Tensor) -> Tensor:
        # driving_image: [B, 3, H, W] -> [B, motion_dim]
        cfg = self.config
        if driving_image.ndim != 4 or driving_image.shape[1] != 3:
            raise ValueError(f"driving_image must be [B, 3, H, W], got {tuple(driving_image.shape)}")
        if self.external is not None:
            with torch.no_grad():
                motion = self.external(driving_image.float())
            if motion.ndim != 2 or motion.shape != (driving_image.shape[0], cfg.motion_dim):
                raise ValueError(f"the motion encoder at {cfg.path} returned {tuple(motion.shape)}, expected "
                                 f"[{driving_image.shape[0]}, {cfg.motion_dim}]")
            return motion.to(driving_image.dtype)
        x = resize(driving_image, (cfg.input_resolution, cfg.input_resolution))
        x = self.convs(x)  # [B, widths[-1], 4, 4]
        return self.head(F.leaky_relu(x, 0.2).flatten(1))  # [B, motion_dim]


def _load_torchscript(path: str) -> torch.jit.ScriptModule:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"motion encoder not found: {file} (export a PD-FGC-style encoder with torch.jit.save)")
    try:
        module = torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{file} is not a TorchScript archive: {str(exc).splitlines()[0]}") from None
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    logger.info("loaded the pretrained motion encoder %s", file)
    return module


def load_motion_encoder(config: MotionEncoderConfig | str) -> MotionEncoder:
    """A motion encoder from a config, a preset name, or a saved checkpoint folder."""
    if isinstance(config, str):
        if Path(config).is_dir():
            return MotionEncoder.from_pretrained(config)
        return MotionEncoder(MOTION_ENCODER_PRESETS.get(config))
    return MotionEncoder(config)
