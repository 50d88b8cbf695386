"""The Next3D-style 4D GAN (the Next3D++ generator that AvatarArtist's renderer starts from)."""

from avatar4d.models.next3d.config import GENERATOR_PRESETS, GeneratorConfig
from avatar4d.models.next3d.generator import GeneratorOutput, Next3DGenerator

__all__ = ["GENERATOR_PRESETS", "GeneratorConfig", "GeneratorOutput", "Next3DGenerator"]
