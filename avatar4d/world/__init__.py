"""The procedural 4D head world: analytic, ground-truth heads with the GAN generator's interface.

It stands in for the per-domain Next3D GANs wherever no trained weights exist (the embedded
default, tests, CI), so every later stage learns something checkable: identities differ in head
shape, colours and painted features; expressions move through the morphable head's mesh; each
domain has its own look (:mod:`avatar4d.world.styles`). See :mod:`avatar4d.world.generator`.
"""

from avatar4d.world.checkpoint import COMPONENT, load_world, save_world
from avatar4d.world.config import WORLD_PRESETS, WorldConfig
from avatar4d.world.generator import KIND, ProceduralWorldGenerator, passthrough_decoder
from avatar4d.world.styles import DomainStyle, style_for_domain

__all__ = ["COMPONENT", "KIND", "WORLD_PRESETS", "DomainStyle", "ProceduralWorldGenerator", "WorldConfig",
           "load_world", "passthrough_decoder", "save_world", "style_for_domain"]
