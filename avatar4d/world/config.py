"""Config and presets of the procedural 4D world generator.

Sizes follow the GAN presets the world stands in for, so datasets of either kind have the same
shapes: ``tiny`` = the tiny Next3D++ GAN's 4 × 8 × 64² parametric triplane and 64² images (the
world renders at 32² and upsamples, where the tiny GAN renders 16² and super-resolves);
``paper`` = the release's 4 × 32 × 256², 128² neural rendering, 512² images.

Rendering uses the original Next3D plane convention, (x, y), (x, z), (z, y): its third plane
carries the y–z dependence that the EG3D convention (which samples the x–z plane twice) lacks, so
a head's density can live in planes 1–3 alone and the UV texture on plane 0 only paints it.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.rendering.parametric import FACE_BOX_256
from avatar4d.rendering.renderer import RenderingConfig
from avatar4d.world.styles import DomainStyle

#: Channel roles of every world plane; channels after these are zero.
RGB_CHANNELS = (0, 1, 2)
DENSITY_CHANNEL = 3
HAIR_CHANNEL = 4  # semantic layers: hair, painted features, eye whites
PAINT_CHANNEL = 5
EYE_CHANNEL = 6
BOX_CHANNEL = 7  # 1 on every plane: its plane mean is 1 only inside the triplane box (see the decoder)
MIN_CHANNELS = 8


@dataclasses.dataclass
class WorldConfig(Config):
    """Sizes and look of one domain's world generator.

    ``latent_dim``: z = w size (identity coefficients of the head model first, then appearance).
    ``density_scale``: the decoder's fixed gain from the density channel to raw σ (planes keep
    values of order 1, the renders get a sharp surface). ``style``: the domain's look.
    """

    plane_channels: int = 32
    plane_resolution: int = 256
    neural_resolution: int = 128
    image_resolution: int = 512
    latent_dim: int = 32
    density_scale: float = 50.0
    face_box: tuple[int, int, int, int] = FACE_BOX_256
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = None
    rasterizer_backend: str = "auto"
    rendering: RenderingConfig = dataclasses.field(
        default_factory=lambda: RenderingConfig(plane_convention="next3d", ray_start=2.25, ray_end=3.3))
    style: DomainStyle = dataclasses.field(default_factory=DomainStyle)

    def __post_init__(self) -> None:
        if self.plane_channels < MIN_CHANNELS:
            raise ConfigError(f"the world needs >= {MIN_CHANNELS} plane channels, got {self.plane_channels}")
        if self.rendering.plane_convention != "next3d":
            raise ConfigError("the world's planes are built for the 'next3d' plane convention "
                              f"((x, y), (x, z), (z, y)), got {self.rendering.plane_convention!r}")
        for name in ("plane_resolution", "neural_resolution", "image_resolution"):
            if getattr(self, name) < 8:
                raise ConfigError(f"{name} must be >= 8, got {getattr(self, name)}")
        if self.image_resolution < self.neural_resolution:
            raise ConfigError("image_resolution must be >= neural_resolution (the world only upsamples)")
        if self.latent_dim < 32:
            raise ConfigError(f"latent_dim must be >= 32 (identity + appearance), got {self.latent_dim}")
        if self.density_scale <= 0:
            raise ConfigError(f"density_scale must be > 0, got {self.density_scale}")

    @property
    def decoder_hidden(self) -> int:
        """Two softplus units per channel: softplus(x) − softplus(−x) = x passes it through exactly."""
        return 2 * self.plane_channels


WORLD_PRESETS: PresetRegistry[WorldConfig] = PresetRegistry("world")


@WORLD_PRESETS.register("tiny")
def _tiny() -> WorldConfig:
    """The tiny GAN's shapes (4 × 8 × 64², 64² images), rendered at 32² with 16 + 16 samples."""
    return WorldConfig(plane_channels=8, plane_resolution=64, neural_resolution=32, image_resolution=64,
                       rendering=RenderingConfig(plane_convention="next3d", ray_start=2.25, ray_end=3.3,
                                                 depth_resolution=16, depth_resolution_importance=16))


@WORLD_PRESETS.register("small")
def _small() -> WorldConfig:
    return WorldConfig(plane_channels=16, plane_resolution=128, neural_resolution=64, image_resolution=128,
                       rendering=RenderingConfig(plane_convention="next3d", ray_start=2.25, ray_end=3.3,
                                                 depth_resolution=24, depth_resolution_importance=24))


@WORLD_PRESETS.register("paper")
def _paper() -> WorldConfig:
    """The release's shapes: 4 × 32 × 256² parametric triplanes, 128² rendering (48 + 48), 512² images."""
    return WorldConfig()
