"""Domain looks of the procedural world: palette, material pattern and shading per style domain.

AvatarArtist's domains differ in colour, material and rendering style (a marble Greek statue, a
saturated Pixar toon, a stained-glass window …). The world gives every catalog domain a distinct,
recognisable look so that a DiT has to read the style from the portrait, as in the paper. A look
is a :class:`DomainStyle`: colour ranges that identities are drawn from, a material ``pattern``
painted into the planes, and how the baked shading looks (smooth or toon bands). The paper's
domains have hand-picked looks (:data:`HAND_PICKED`); any other name (a user's own domain) gets a
look derived from a hash of its name, so it is still stable and distinct.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib

from avatar4d.config import Config, ConfigError

RGB = tuple[float, float, float]
PATTERNS = ("none", "marble", "cells", "stripes", "pixel", "hatch", "spots")


@dataclasses.dataclass
class DomainStyle(Config):
    """One domain's look. Colours are linear RGB in [0, 1].

    ``skin_dark``/``skin_light``: the range identities' skin tones are drawn from; ``hair_*``
    likewise; ``lips``, ``iris_a``/``iris_b`` (iris colours are mixed between the two), ``sclera``,
    ``brows`` (None: a darker hair colour). ``pattern`` (one of :data:`PATTERNS`) is painted with
    ``pattern_color`` at ``pattern_strength`` (0..1) and spatial ``pattern_frequency`` (cycles per
    unit). ``shading``: how much the sides darken (baked Lambert-like falloff); ``toon_levels`` > 0
    quantises that shading into bands. ``saturation`` scales the colours' saturation (0: grey).
    """

    name: str = "realistic"
    skin_dark: RGB = (0.36, 0.22, 0.15)
    skin_light: RGB = (0.93, 0.76, 0.64)
    hair_dark: RGB = (0.05, 0.04, 0.03)
    hair_light: RGB = (0.72, 0.55, 0.30)
    lips: RGB = (0.70, 0.28, 0.30)
    iris_a: RGB = (0.25, 0.15, 0.08)
    iris_b: RGB = (0.25, 0.50, 0.75)
    sclera: RGB = (0.95, 0.95, 0.93)
    brows: RGB | None = None
    pattern: str = "none"
    pattern_color: RGB = (0.5, 0.5, 0.5)
    pattern_strength: float = 0.0
    pattern_frequency: float = 12.0
    shading: float = 0.8
    toon_levels: int = 0
    saturation: float = 1.0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ConfigError(f"style {self.name}: pattern must be one of {list(PATTERNS)}, got {self.pattern!r}")
        colours = [self.skin_dark, self.skin_light, self.hair_dark, self.hair_light, self.lips, self.iris_a,
                   self.iris_b, self.sclera, self.pattern_color] + ([self.brows] if self.brows else [])
        for colour in colours:
            if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
                raise ConfigError(f"style {self.name}: colours are three values in [0, 1], got {colour}")
        if not 0 <= self.pattern_strength <= 1 or self.shading < 0 or self.toon_levels < 0 or self.saturation < 0:
            raise ConfigError(f"style {self.name}: pattern_strength in [0, 1]; shading, toon_levels and "
                              "saturation >= 0")
        if self.pattern_frequency <= 0:
            raise ConfigError(f"style {self.name}: pattern_frequency must be > 0")


def _style(name: str, **fields) -> DomainStyle:
    return DomainStyle(name=name, **fields)


#: Looks of the paper's domains (factory.domains). Unlisted names get :func:`derived_style`.
HAND_PICKED: dict[str, DomainStyle] = {style.name: style for style in (
    _style("realistic"),
    _style("pixar", skin_dark=(0.80, 0.52, 0.36), skin_light=(1.0, 0.80, 0.62), hair_dark=(0.35, 0.12, 0.02),
           hair_light=(0.95, 0.62, 0.10), lips=(0.90, 0.30, 0.30), iris_a=(0.10, 0.35, 0.90),
           iris_b=(0.15, 0.65, 0.25), toon_levels=3, shading=1.0, saturation=1.5),
    _style("greek_statue", skin_dark=(0.80, 0.79, 0.76), skin_light=(0.96, 0.95, 0.92), hair_dark=(0.78, 0.77, 0.74),
           hair_light=(0.90, 0.89, 0.86), lips=(0.80, 0.78, 0.75), iris_a=(0.82, 0.81, 0.78),
           iris_b=(0.86, 0.85, 0.82), sclera=(0.90, 0.89, 0.86), brows=(0.72, 0.71, 0.68), pattern="marble",
           pattern_color=(0.45, 0.47, 0.50), pattern_strength=0.55, pattern_frequency=9.0, shading=1.2),
    _style("lego", skin_dark=(0.95, 0.78, 0.05), skin_light=(1.0, 0.86, 0.15), hair_dark=(0.10, 0.08, 0.06),
           hair_light=(0.60, 0.12, 0.08), lips=(0.10, 0.08, 0.06), iris_a=(0.05, 0.05, 0.05),
           iris_b=(0.10, 0.10, 0.10), sclera=(0.05, 0.05, 0.05), toon_levels=2, shading=0.5, saturation=1.3),
    _style("zombie", skin_dark=(0.25, 0.48, 0.18), skin_light=(0.42, 0.72, 0.30), hair_dark=(0.12, 0.12, 0.10),
           hair_light=(0.30, 0.28, 0.22), lips=(0.30, 0.12, 0.15), iris_a=(0.85, 0.85, 0.60),
           iris_b=(0.70, 0.20, 0.15), pattern="spots", pattern_color=(0.30, 0.10, 0.10), pattern_strength=0.6,
           pattern_frequency=14.0),
    _style("devil", skin_dark=(0.55, 0.05, 0.04), skin_light=(0.85, 0.15, 0.10), hair_dark=(0.03, 0.02, 0.02),
           hair_light=(0.15, 0.05, 0.05), lips=(0.15, 0.02, 0.02), iris_a=(1.0, 0.80, 0.0), iris_b=(1.0, 0.40, 0.0),
           sclera=(0.20, 0.05, 0.02), saturation=1.2, shading=1.0),
    _style("skeleton", skin_dark=(0.82, 0.80, 0.70), skin_light=(0.95, 0.93, 0.85), hair_dark=(0.80, 0.78, 0.68),
           hair_light=(0.90, 0.88, 0.80), lips=(0.30, 0.28, 0.25), iris_a=(0.02, 0.02, 0.02),
           iris_b=(0.05, 0.05, 0.05), sclera=(0.02, 0.02, 0.02), brows=(0.75, 0.73, 0.65), shading=1.3),
    _style("stained_glass", skin_dark=(0.20, 0.30, 0.70), skin_light=(0.60, 0.30, 0.70), hair_dark=(0.10, 0.50, 0.20),
           hair_light=(0.80, 0.60, 0.10), lips=(0.80, 0.10, 0.10), pattern="cells", pattern_color=(0.02, 0.02, 0.02),
           pattern_strength=0.9, pattern_frequency=10.0, shading=0.3, saturation=1.4),
    _style("ink", skin_dark=(0.88, 0.88, 0.88), skin_light=(0.98, 0.98, 0.98), hair_dark=(0.02, 0.02, 0.02),
           hair_light=(0.15, 0.15, 0.15), lips=(0.25, 0.25, 0.25), iris_a=(0.05, 0.05, 0.05),
           iris_b=(0.20, 0.20, 0.20), pattern="hatch", pattern_color=(0.05, 0.05, 0.05), pattern_strength=0.5,
           pattern_frequency=30.0, shading=1.0, saturation=0.0),
    _style("pixel_art", skin_dark=(0.85, 0.55, 0.40), skin_light=(1.0, 0.75, 0.55), hair_light=(0.90, 0.20, 0.50),
           pattern="pixel", pattern_strength=1.0, pattern_frequency=10.0, toon_levels=2, saturation=1.6),
    _style("steampunk", skin_dark=(0.55, 0.38, 0.18), skin_light=(0.80, 0.60, 0.30), hair_dark=(0.30, 0.18, 0.08),
           hair_light=(0.70, 0.45, 0.15), lips=(0.45, 0.25, 0.12), iris_a=(0.20, 0.55, 0.55),
           iris_b=(0.60, 0.40, 0.10), pattern="stripes", pattern_color=(0.30, 0.20, 0.08), pattern_strength=0.45,
           pattern_frequency=16.0, shading=1.1),
    _style("elf", skin_dark=(0.85, 0.80, 0.75), skin_light=(0.98, 0.94, 0.90), hair_dark=(0.75, 0.78, 0.82),
           hair_light=(0.95, 0.96, 0.98), iris_a=(0.30, 0.70, 0.60), iris_b=(0.40, 0.50, 0.90), shading=0.6),
    _style("orc", skin_dark=(0.20, 0.35, 0.12), skin_light=(0.35, 0.55, 0.20), hair_dark=(0.05, 0.05, 0.04),
           lips=(0.18, 0.25, 0.10), iris_a=(0.90, 0.60, 0.05), iris_b=(0.80, 0.10, 0.05), shading=1.1),
    _style("mario", skin_dark=(0.95, 0.70, 0.50), skin_light=(1.0, 0.82, 0.65), hair_dark=(0.80, 0.05, 0.05),
           hair_light=(0.95, 0.10, 0.10), lips=(0.85, 0.40, 0.35), iris_a=(0.10, 0.30, 0.90), toon_levels=3,
           saturation=1.4),
    _style("peking_opera", skin_dark=(0.92, 0.90, 0.88), skin_light=(1.0, 1.0, 0.98), hair_dark=(0.02, 0.02, 0.02),
           hair_light=(0.05, 0.05, 0.05), lips=(0.85, 0.02, 0.05), pattern="stripes", pattern_color=(0.90, 0.05, 0.10),
           pattern_strength=0.5, pattern_frequency=5.0, saturation=1.3),
    _style("graffiti", skin_dark=(0.10, 0.80, 0.90), skin_light=(0.95, 0.30, 0.80), hair_dark=(0.95, 0.90, 0.10),
           pattern="spots", pattern_color=(0.10, 0.10, 0.90), pattern_strength=0.7, pattern_frequency=8.0,
           saturation=1.6, toon_levels=2),
)}


def derived_style(name: str) -> DomainStyle:
    """A stable look for a domain without a hand-picked one: hues and pattern from a hash of the name."""
    digest = hashlib.blake2b(name.encode(), digest_size=16, person=b"avatar4d-style").digest()
    unit = [b / 255 for b in digest]
    hue = unit[0]

    def colour(h: float, s: float, v: float) -> RGB:
        return tuple(round(c, 4) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]

    pattern = PATTERNS[int(unit[1] * len(PATTERNS)) % len(PATTERNS)]
    return DomainStyle(
        name=name, skin_dark=colour(hue, 0.5, 0.45), skin_light=colour(hue + 0.05, 0.35, 0.95),
        hair_dark=colour(hue + 0.5, 0.6, 0.15), hair_light=colour(hue + 0.45, 0.7, 0.7),
        lips=colour(hue + 0.9, 0.7, 0.6), iris_a=colour(hue + 0.3, 0.8, 0.5), iris_b=colour(hue + 0.6, 0.8, 0.7),
        pattern=pattern, pattern_color=colour(hue + 0.5 + unit[2] * 0.3, 0.8, 0.3 + 0.5 * unit[3]),
        pattern_strength=0.0 if pattern == "none" else round(0.3 + 0.5 * unit[4], 3),
        pattern_frequency=round(6 + 14 * unit[5], 2), shading=round(0.5 + unit[6], 3),
        toon_levels=int(unit[7] * 4) if unit[8] > 0.5 else 0, saturation=round(0.8 + 0.6 * unit[9], 3))


def style_for_domain(name: str) -> DomainStyle:
    """The look of domain ``name``: hand-picked for the paper's main domains, derived otherwise."""
    return HAND_PICKED[name].replace() if name in HAND_PICKED else derived_style(name)
