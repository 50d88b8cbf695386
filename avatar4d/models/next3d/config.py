"""Config and presets of the Next3D++ generator.

``paper`` is structurally identical to the released ``ani3dgan512.pkl`` (InvertAvatar's
``triplane_v20.TriPlaneGenerator``, 88,301,010 parameters): three StyleGAN2 backbones at 256 px
(static triplane 96 channels; UV texture and face 32 channels), EG3D super-resolution 128 → 512,
the OSG decoder, 128² neural rendering with the Next3D++ plane convention.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, PresetRegistry
from avatar4d.models.stylegan2 import BACKBONE_PRESETS, StyleGAN2BackboneConfig
from avatar4d.models.superresolution import SUPERRESOLUTION_PRESETS, SuperResolutionConfig
from avatar4d.rendering.parametric import FACE_BOX_256, HOLE_FILL_SEEDS
from avatar4d.rendering.renderer import RENDERING_PRESETS, RenderingConfig


@dataclasses.dataclass
class GeneratorConfig(Config):
    """Sizes and behaviour of :class:`~avatar4d.models.next3d.Next3DGenerator`.

    ``backbone`` describes the static backbone; the texture and face backbones share it with
    ``img_channels = plane_channels``. ``face_box`` is (row0, row1, col0, col1) on a 256² plane,
    scaled to ``backbone.img_resolution``. ``mouth_hole_top_rows``: holes of the face mask in the
    first rows of the chin-first face-box render are not counted as mouth in the conditioning alpha
    (the official code's ``upper_mouth_mask[:, :, :87] = 0``, which keeps the upper mouth cavity; see
    :func:`~avatar4d.rendering.parametric.mouth_alphas`). ``hole_fill_seed``: ``corner`` (official
    ``fill_mouth``, default: the released weights saw it) or ``border``.
    """

    backbone: StyleGAN2BackboneConfig = dataclasses.field(default_factory=lambda: BACKBONE_PRESETS.get("paper"))
    superresolution: SuperResolutionConfig = dataclasses.field(
        default_factory=lambda: SUPERRESOLUTION_PRESETS.get("paper"))
    rendering: RenderingConfig = dataclasses.field(default_factory=lambda: RENDERING_PRESETS.get("paper"))
    plane_channels: int = 32
    decoder_hidden: int = 64
    decoder_lr_mul: float = 1.0
    neural_resolution: int = 128
    face_box: tuple[int, int, int, int] = FACE_BOX_256
    mouth_hole_top_rows: int = 87
    hole_fill_seed: str = "corner"
    c_scale: float = 1.0
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = 14
    rasterizer_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backbone.img_channels != 3 * self.plane_channels:
            raise ValueError(f"the static backbone must output 3 × plane_channels = {3 * self.plane_channels} "
                             f"channels, got {self.backbone.img_channels}")
        if self.superresolution.in_channels != self.plane_channels:
            raise ValueError("superresolution.in_channels must equal plane_channels (the decoder's feature width)")
        if self.superresolution.w_dim != self.backbone.w_dim:
            raise ValueError("superresolution.w_dim must equal backbone.w_dim")
        if self.neural_resolution < 4:
            raise ValueError(f"neural_resolution must be >= 4, got {self.neural_resolution}")
        if self.hole_fill_seed not in HOLE_FILL_SEEDS:
            raise ValueError(f"hole_fill_seed must be one of {list(HOLE_FILL_SEEDS)}, got {self.hole_fill_seed!r}")
        row0, row1, col0, col1 = self.face_box
        if not (0 <= row0 < row1 <= 256 and 0 <= col0 < col1 <= 256 and row1 - row0 == col1 - col0):
            raise ValueError(f"face_box must be a square window inside 256², got {self.face_box}")

    @property
    def plane_resolution(self) -> int:
        return self.backbone.img_resolution

    @property
    def image_resolution(self) -> int:
        return self.superresolution.output_resolution

    def texture_backbone(self) -> StyleGAN2BackboneConfig:
        return self.backbone.replace(img_channels=self.plane_channels)


GENERATOR_PRESETS: PresetRegistry[GeneratorConfig] = PresetRegistry("generator")


@GENERATOR_PRESETS.register("paper")
def _paper() -> GeneratorConfig:
    """The released Next3D++ generator (ani3dgan512.pkl): 512² images, 88,301,010 parameters."""
    return GeneratorConfig()


@GENERATOR_PRESETS.register("tiny")
def _tiny() -> GeneratorConfig:
    """CPU size: 8-channel planes at 64² (the stored parametric triplane 4 × 8 × 64²), 16² neural rendering
    (16 samples per ray, no importance pass), 64² images; backbones of at most 16 channels (4 at 64²) with a
    1-layer mapping, one 8-channel SR block (32² → 64²); 111,881 parameters, ≥ 5 fine-tune steps/s at
    micro-batch 4 on one CPU thread (benchmarks/results/tiny_steps.md)."""
    channels = 8
    return GeneratorConfig(
        backbone=BACKBONE_PRESETS.get("tiny", img_channels=3 * channels),
        superresolution=SUPERRESOLUTION_PRESETS.get("tiny", in_channels=channels),
        rendering=RENDERING_PRESETS.get("paper", depth_resolution=16, depth_resolution_importance=0),
        plane_channels=channels, decoder_hidden=16, neural_resolution=16, truncation_cutoff=None)
