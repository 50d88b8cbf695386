"""Config and presets of the motion-aware renderer (AvatarArtist's ``TriPlaneReconstructorNeutralize``).

``paper`` is structurally identical to the released renderer (``render.pkl``'s ``G_ema``: 266,615,896
parameters, every name and shape of ``reference/avatarartist-release/render_TriPlaneReconstructorNeutralize.json``
once the 8 alias keys of its 3-D convolutions are folded). ``tiny`` keeps every module and data path
at CPU sizes and reads the tiny factory's 4 × 8 × 64² parametric triplanes.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, PresetRegistry
from avatar4d.models.stylegan2 import BACKBONE_PRESETS, StyleGAN2BackboneConfig
from avatar4d.models.superresolution import SUPERRESOLUTION_PRESETS, SuperResolutionConfig
from avatar4d.rendering.parametric import FACE_BOX_256
from avatar4d.rendering.renderer import RENDERING_PRESETS, RenderingConfig
from avatar4d.world.config import WORLD_PRESETS


@dataclasses.dataclass
class RendererConfig(Config):
    """Sizes of :class:`~avatar4d.models.renderer.MotionAwareRenderer`.

    Source images are resized to ``2 · plane_resolution`` (512² in the release) before the encoders:
    the global encoder (ResNet with ``resnet_depths`` BasicBlocks per stage, no normalisation, RGB +
    2 coordinate channels, output stride 8, then an ASPP decoder of ``aspp_channels``) gives features
    at R/4, the detail encoder at R. The parametric triplane, rasterized through the target mesh,
    is encoded by 3-D convolutions (``tri_*``) to ``tri_channels`` per plane at R/4. The canonical
    ViT (``embed_dim``, ``num_blocks_neutral`` blocks cross-attending to the source motion, then
    ``num_blocks_motion`` to the driving motion, ``motion_tokens``² motion tokens) and the triplane
    decoder (one spatial-reduction block at R/2) produce 3 × ``plane_channels`` planes at R.
    """

    plane_channels: int = 32
    plane_resolution: int = 256
    motion_dim: int = 548                   # PD-FGC motion vector of the release
    motion_hidden: int = 512
    motion_map_layers: int = 2
    motion_tokens: int = 8                  # the motion is projected to motion_tokens² tokens
    resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
    resnet_depths: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-34
    aspp_channels: int = 256
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    detail_channels: tuple[int, ...] = (64, 96, 96, 96, 96)
    tri_base_channels: int = 64
    tri_downsamples: int = 2                # plane resolution → R / 4
    tri_channels: int = 128
    tri_norm_groups: int = 32
    embed_dim: int = 1024
    canonical_heads: int = 4
    num_blocks_neutral: int = 4
    num_blocks_motion: int = 4
    mlp_ratio: float = 2.0
    canonical_hidden: tuple[int, int] = (128, 96)      # convs_1 widths (triplane features → aspp_channels)
    canonical_up: tuple[int, int] = (128, 128)         # convs widths after the two 2× upsamplings
    canonical_channels: int = 96
    decoder_in_hidden: tuple[int, int] = (256, 128)     # generator_triplane.convs1
    decoder_embed_dim: int = 1024
    decoder_heads: int = 2
    decoder_sr_ratio: int = 2
    decoder_blocks: int = 1
    decoder_hidden: tuple[int, int, int] = (256, 128, 128)  # convs2 and convs3
    face_backbone: StyleGAN2BackboneConfig = dataclasses.field(
        default_factory=lambda: BACKBONE_PRESETS.get("paper", img_channels=32))
    superresolution: SuperResolutionConfig = dataclasses.field(
        default_factory=lambda: SUPERRESOLUTION_PRESETS.get("paper"))
    rendering: RenderingConfig = dataclasses.field(default_factory=lambda: RENDERING_PRESETS.get("paper"))
    osg_hidden: int = 64
    decoder_lr_mul: float = 1.0
    neural_resolution: int = 128
    face_box: tuple[int, int, int, int] = FACE_BOX_256
    mouth_hole_top_rows: int = 87
    rasterizer_backend: str = "auto"
    # True: the refined planes are the un-refined parametric triplane (plain composition through the target
    # mesh, as the world renders it) PLUS the decoder's output, whose last convolution starts at zero, so an
    # untrained renderer renders the un-refined baseline and training only adds to it. An init and one add,
    # no new parameter. False (``paper``): the release's fusion (its conv_last_2 outputs the planes).
    residual_fusion: bool = False

    def __post_init__(self) -> None:
        c, r = self.plane_channels, self.plane_resolution
        if r % 4 or r < 8:
            raise ValueError(f"plane_resolution must be a multiple of 4 and >= 8, got {r}")
        if self.face_backbone.img_channels != c or self.face_backbone.img_resolution != r:
            raise ValueError(f"face_backbone must output {c} channels at {r}² (plane_channels, plane_resolution)")
        if self.superresolution.in_channels != c or self.superresolution.w_dim != self.face_backbone.w_dim:
            raise ValueError("superresolution.in_channels must equal plane_channels and w_dim the face backbone's")
        if len(self.resnet_widths) != 4 or len(self.resnet_depths) != 4:
            raise ValueError("resnet_widths and resnet_depths need 4 stages")
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            raise ValueError("embed_dim and decoder_embed_dim must be divisible by 4 (2× pixel shuffle)")
        if self.tri_base_channels % self.tri_norm_groups or self.tri_channels % 2:
            raise ValueError("tri_base_channels must be divisible by tri_norm_groups and tri_channels be even")
        if r % 2 ** self.tri_downsamples or r // 2 ** self.tri_downsamples != r // 4:
            raise ValueError("tri_downsamples must bring the plane resolution to R / 4 (2)")
        if self.motion_map_layers < 0 or self.motion_dim < 1 or self.motion_tokens < 1:
            raise ValueError("motion_dim and motion_tokens must be >= 1 and motion_map_layers >= 0")
        if self.neural_resolution < 4:
            raise ValueError(f"neural_resolution must be >= 4, got {self.neural_resolution}")

    @property
    def encoder_resolution(self) -> int:
        """Side of the source image the encoders read (2 · plane_resolution; 512 in the release)."""
        return 2 * self.plane_resolution

    @property
    def image_resolution(self) -> int:
        return self.superresolution.output_resolution

    @property
    def motion_width(self) -> int:
        """Width of the motion vector after the mapping layers."""
        return self.motion_hidden if self.motion_map_layers > 0 else self.motion_dim


RENDERER_PRESETS: PresetRegistry[RendererConfig] = PresetRegistry("motion-aware renderer")


@RENDERER_PRESETS.register("paper")
def _paper() -> RendererConfig:
    """The released renderer (render.pkl ``G_ema``): 512² images, 266,615,896 parameters."""
    return RendererConfig()


@RENDERER_PRESETS.register("tiny")
def _tiny() -> RendererConfig:
    """CPU size for the tiny factory's 4 × 8 × 64² triplanes: 128² encoder input, widths ≤ 32, one neutralising
    and one motion block over 8 × 8 tokens, 16² neural rendering (16 samples, no importance pass), 64² output."""
    channels, resolution = 8, 64
    return RendererConfig(
        plane_channels=channels, plane_resolution=resolution, motion_dim=32, motion_hidden=32, motion_tokens=2,
        resnet_widths=(8, 8, 16, 16), resnet_depths=(1, 1, 1, 1), aspp_channels=16, aspp_rates=(1, 2, 3),
        detail_channels=(8, 8), tri_base_channels=4, tri_channels=16, tri_norm_groups=4,
        embed_dim=32, canonical_heads=2, num_blocks_neutral=1, num_blocks_motion=1,
        canonical_hidden=(16, 16), canonical_up=(16, 16), canonical_channels=16,
        decoder_in_hidden=(16, 16), decoder_embed_dim=32, decoder_heads=2, decoder_hidden=(16, 16, 16),
        face_backbone=BACKBONE_PRESETS.get("tiny", img_channels=channels),
        superresolution=SUPERRESOLUTION_PRESETS.get("tiny", in_channels=channels),
        # the procedural world's rendering (its multiview sets are the tiny recipe's data and ground truth)
        rendering=WORLD_PRESETS.get("tiny").rendering.replace(depth_resolution_importance=0),
        osg_hidden=16, neural_resolution=16, residual_fusion=True)
