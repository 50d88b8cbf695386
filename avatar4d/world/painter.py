"""Analytic parametric triplanes: a head's geometry, colours and painted face as plane functions.

The world's decoder passes plane features straight through (see :mod:`avatar4d.world.generator`),
so the sum over the three rendered planes *is* the scene. With the Next3D convention a point
(x, y, z) reads plane 0 at (x, y), plane 1 at (x, z) and plane 2 at (z, y), and every channel is
a sum ``P0(x, y) + P1(x, z) + P2(z, y)``:

- density (channel 3): ``k(1 − q) + δ(x, y)`` with the ellipsoid ``q = (x/a)² + ((y−y0)/b)² +
  ((z−z0)/c)²`` split as ``P1 = k(½ − (x/a)² − ½((z−z0)/c)²)`` and ``P2 = k(½ − ((y−y0)/b)² −
  ½((z−z0)/c)²)`` (exact: a quadratic head is a sum of plane terms; both are clamped to a narrow
  range away from the surface, where only the sign matters); plane 0 adds ``δ``: a constant
  on the static plane, and on the UV texture the same constant plus a nose bump and a dip along
  the lips' seam, so a jaw that opens (stretching the seam) opens a recessed, dark mouth;
- colour (channels 0–2, logits): the albedo on plane 0 (skin, hair above the hairline, the
  domain's pattern; on the texture also eyes, brows, lips, nostrils, blush), baked shading that
  darkens towards the silhouette on planes 1 (x) and 2 (y), and hair at the back on plane 1 (z);
- semantic layers (channels 4–6): hair, painted features, eye whites;
- channel 7 is 1 on every plane: outside the box a plane reads 0, so the plane mean of channel 7
  tells the decoder whether a point lies in all three planes' range (see :mod:`.generator`);
  more channels are 0.

The head's ellipsoid comes from the identity's neutral mesh (its extents), the texture is painted
at each texel's point on that mesh (:mod:`avatar4d.world.uv_lookup`) with the facial features
anchored to the mean head's layout, so they move with the mesh's identity and expression.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from avatar4d.geometry.morphable import FaceParams, MorphableModel
from avatar4d.geometry.morphable.procedural_mesh import FaceLayout
from avatar4d.rendering.parametric import ParametricTriplane
from avatar4d.world import config as cfg
from avatar4d.world.appearance import Appearance, PatternField, rgb_logit, smoothstep
from avatar4d.world.config import WorldConfig
from avatar4d.world.uv_lookup import build_uv_lookup

DENSITY_SLOPE = 2.0  # planes 1 and 2 hold k·(½ − …): a steep surface, so small plane errors move it little
DENSITY_OFFSET = 0.3  # δ of plane 0 outside the painted bumps (the surface sits at q = 1 + δ/k)
DENSITY_CEILING = 1.0  # planes 1 and 2 are clamped to [floor, ceiling]: a narrow range keeps the channel's
DENSITY_FLOOR = -2.0  # spread (what a VAE's normalisation scales errors by) small; floor < −(ceiling + max δ)
NOSE_HEIGHT = 0.5
MOUTH_DIP = 0.9
LAYOUT = FaceLayout()


class HeadGeometry:
    """Ellipsoid of each identity's neutral head: half axes a, b, c and centre (0, y0, z0), each [B, 1, 1]."""

    def __init__(self, head: MorphableModel, identity: Tensor) -> None:
        batch = identity.shape[0]
        params = FaceParams(identity, identity.new_zeros(batch, head.expression_dim), identity.new_zeros(batch, 3))
        vertices = head.vertices(params.to(head.device, head.float_dtype)).to(identity)  # [B, V, 3]
        masks = getattr(head, "region_masks", {})
        body = (~masks["nose"].to(identity.device) if "nose" in masks
                else torch.ones_like(vertices[0, :, 0], dtype=torch.bool))
        x, y, z = vertices.unbind(-1)
        shape = (batch, 1, 1)
        self.a = x.abs().amax(1).reshape(shape)
        y_min, y_max = y.amin(1), y.amax(1)
        self.y0, self.b = ((y_min + y_max) / 2).reshape(shape), ((y_max - y_min) / 2).reshape(shape)
        z_min, z_max = z.amin(1), z[:, body].amax(1)
        self.z0, self.c = ((z_min + z_max) / 2).reshape(shape), ((z_max - z_min) / 2).reshape(shape)
        # the surface sits where q = 1 + δ/k: shrink the axes so it passes through the mesh's extents
        shrink = 1 / math.sqrt(1 + DENSITY_OFFSET / DENSITY_SLOPE)
        self.a, self.b, self.c = self.a * shrink, self.b * shrink, self.c * shrink


def plane_coordinates(resolution: int, box_warp: float, device: torch.device) -> Tensor:
    """World coordinate of each pixel centre along one plane axis [R] (``align_corners=False``)."""
    return ((torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1) * box_warp / 2


class WorldPainter(nn.Module):
    """w [B, L] → the world's :class:`ParametricTriplane` (texture [B, C, R, R], static [B, 3, C, R, R])."""

    def __init__(self, config: WorldConfig, head: MorphableModel) -> None:
        super().__init__()
        self.config = config
        self.head = head
        lookup = build_uv_lookup(head, config.plane_resolution)
        self.register_buffer("uv_mean", lookup.mean, persistent=False)  # [3, R, R]
        self.register_buffer("uv_basis", lookup.basis, persistent=False)  # [Ni, 3, R, R]
        self.pattern = PatternField(config.style)

    def forward(self, w: Tensor) -> ParametricTriplane:
        identity_dim = self.head.identity_dim
        identity = w[:, :identity_dim].float()
        appearance = Appearance.from_latent(w[:, identity_dim:], self.config.style)
        geometry = HeadGeometry(self.head, identity)
        r, c = self.config.plane_resolution, self.config.plane_channels
        coords = plane_coordinates(r, self.config.rendering.box_warp, w.device)
        rows, cols = coords[:, None].expand(r, r), coords[None, :].expand(r, r)  # [R, R] world values of rows / columns

        static = w.new_zeros(w.shape[0], 3, c, r, r, dtype=torch.float32)
        static[:, 0] = self._frontal(cols, rows, appearance, geometry, c)  # (x, y)
        static[:, 1] = self._side(cols, rows, appearance, geometry, c)  # (x, z)
        static[:, 2] = self._vertical(cols, rows, appearance, geometry, c)  # (z, y)
        texel = self.uv_mean[None] + torch.einsum("bi,icrs->bcrs", identity, self.uv_basis)  # [B, 3, R, R]
        texture = self._texture(texel, appearance, geometry, c)
        return ParametricTriplane(texture=texture, static=static)

    # --- plane 0: albedo and δ ------------------------------------------------------------------
    def _albedo(self, x: Tensor, y: Tensor, look: Appearance, geo: HeadGeometry) -> tuple[Tensor, Tensor, Tensor]:
        """Skin, hair above the hairline and the domain's pattern at points (x, y) → (rgb [B, 3, …], hair, pattern)."""
        x, y = self.pattern.quantise(x), self.pattern.quantise(y)
        hairline = look.hairline[:, None, None] - 0.16 * (x / geo.a) ** 2  # [B, R, R]
        hair = smoothstep(-0.012, 0.012, y - hairline)
        rgb = torch.lerp(look.skin[..., None, None], look.hair[..., None, None], hair[:, None])  # [B, 3, R, R]
        pattern = self.pattern(x, y, look)  # [B, R, R] in [0, 1]
        rgb = self.pattern.apply(rgb, pattern, x, y, look)
        return rgb, hair, pattern

    def _frontal(self, x: Tensor, y: Tensor, look: Appearance, geo: HeadGeometry, channels: int) -> Tensor:
        rgb, hair, pattern = self._albedo(x.expand(look.batch, -1, -1), y.expand(look.batch, -1, -1), look, geo)
        plane = rgb.new_zeros(look.batch, channels, *x.shape)
        plane[:, :3] = rgb_logit(rgb)
        plane[:, cfg.DENSITY_CHANNEL] = DENSITY_OFFSET
        plane[:, cfg.HAIR_CHANNEL] = 4 * (hair - 0.5)
        plane[:, cfg.BOX_CHANNEL] = 1.0
        plane[:, cfg.PAINT_CHANNEL] = plane[:, cfg.EYE_CHANNEL] = -2.0
        return plane

    def _texture(self, texel: Tensor, look: Appearance, geo: HeadGeometry, channels: int) -> Tensor:
        """Plane 0's UV texture: the frontal albedo at each texel's point plus the painted face."""
        x, y = texel[:, 0], texel[:, 1]  # [B, R, R] the identity's neutral points
        mx, my, mz = self.uv_mean  # [R, R] the mean head's points (feature anchors)
        rgb, hair, pattern = self._albedo(x, y, look, geo)
        front = smoothstep(0.05, 0.15, mz)[None]  # [1, R, R]
        mx, my = self.pattern.quantise(mx), self.pattern.quantise(my)
        paint, eye_white = torch.zeros_like(hair), torch.zeros_like(hair)

        def over(colour: Tensor, alpha: Tensor) -> None:
            nonlocal rgb, paint
            alpha = (alpha * front).clamp(0, 1)
            rgb = torch.lerp(rgb, colour.expand_as(rgb), alpha[:, None])
            paint = torch.maximum(paint, alpha)

        blush = sum(torch.exp(-((mx - side * 0.11) ** 2 + (my + 0.07) ** 2) / (2 * 0.028 ** 2)) for side in (-1, 1))
        over(look.lips[..., None, None], 0.35 * look.blush[:, None, None] * blush)
        eye_size = look.eye_size[:, None, None]
        for side in (-1, 1):
            dx, dy = mx - side * LAYOUT.eye_x, my - LAYOUT.eye_y
            sclera = smoothstep(1.0, 0.8, (dx / (0.034 * eye_size)) ** 2 + (dy / (0.0125 * eye_size)) ** 2)
            over(look.sclera[..., None, None], sclera)
            eye_white = torch.maximum(eye_white, sclera * front)
            radius = torch.sqrt(dx ** 2 + dy ** 2)
            over(look.iris[..., None, None], sclera * smoothstep(0.0135, 0.0115, radius / eye_size))
            over(look.pupil[..., None, None], sclera * smoothstep(0.0062, 0.0048, radius / eye_size))
            arch = LAYOUT.brow_y + 0.012 * (1 - (dx / 0.05) ** 2)
            thickness = look.brow[:, None, None]
            brow = smoothstep(1.0, 0.7, (dx / 0.05) ** 2) * smoothstep(1.0, 0.6, ((my - arch) / thickness) ** 2)
            over(look.brows[..., None, None], brow)
            nostril_distance = torch.sqrt((mx - side * 0.017) ** 2 + (my - LAYOUT.nose_tip_y + 0.012) ** 2)
            nostril = smoothstep(0.007, 0.004, nostril_distance)
            over(look.nostril[..., None, None], 0.8 * nostril[None])
        lip_width = smoothstep(1.0, 0.75, (mx / LAYOUT.mouth_half_width) ** 2)
        curve = 1 - (mx / LAYOUT.mouth_half_width) ** 2
        above, curve = my - LAYOUT.mouth_y, curve.clamp_min(0.2)  # above the lips' seam; lip height profile
        upper = smoothstep(0.0, 0.002, above) * smoothstep(0.014, 0.010, above / curve)
        lower = smoothstep(0.0, 0.002, -above) * smoothstep(0.020, 0.015, -above / curve)
        over(look.lips[..., None, None], (lip_width * (upper + lower))[None].expand_as(paint))
        seam = lip_width * smoothstep(0.005, 0.003, (my - LAYOUT.mouth_y).abs())
        over(look.mouth[..., None, None], seam[None].expand_as(paint))

        plane = rgb.new_zeros(look.batch, channels, *x.shape[-2:])
        plane[:, :3] = rgb_logit(rgb)
        nose = torch.exp(-(mx / 0.024) ** 2 - ((my - (LAYOUT.nose_tip_y + LAYOUT.nose_root_y) / 2) / 0.06) ** 2)
        plane[:, cfg.DENSITY_CHANNEL] = DENSITY_OFFSET + front * (NOSE_HEIGHT * nose - MOUTH_DIP * seam)
        plane[:, cfg.HAIR_CHANNEL] = 4 * (hair - 0.5)
        plane[:, cfg.PAINT_CHANNEL] = 4 * (paint - 0.5)
        plane[:, cfg.EYE_CHANNEL] = 4 * (eye_white - 0.5)
        plane[:, cfg.BOX_CHANNEL] = 1.0
        return plane

    # --- planes 1 and 2: geometry, shading, hair at the back --------------------------------------
    def _shade(self, t: Tensor, look: Appearance) -> Tensor:
        """Logit offset of the baked shading for a normalised squared distance t = (x/a)² ≥ 0."""
        t = t.clamp(0, 1.5)
        levels = self.config.style.toon_levels
        if levels > 0:
            t = torch.floor(t * levels + 0.5) / levels
        return -look.shading[:, None, None] * t

    def _side(self, x: Tensor, z: Tensor, look: Appearance, geo: HeadGeometry, channels: int) -> Tensor:
        """Plane 1 at (x, z): half of the ellipsoid, the x shading and the back hair."""
        u, w = (x / geo.a) ** 2, ((z - geo.z0) / geo.c) ** 2  # [B, R, R]
        plane = u.new_zeros(look.batch, channels, *x.shape)
        plane[:, cfg.DENSITY_CHANNEL] = (DENSITY_SLOPE * (0.5 - u - 0.5 * w)).clamp(DENSITY_FLOOR, DENSITY_CEILING)
        back = smoothstep(-0.15, -0.55, (z - geo.z0) / geo.c)  # 1 behind the ears
        hair_shift = rgb_logit(look.hair) - rgb_logit(look.skin)  # [B, 3]
        plane[:, :3] = self._shade(u, look)[:, None] + back[:, None] * hair_shift[..., None, None]
        plane[:, cfg.HAIR_CHANNEL] = 4 * back
        plane[:, cfg.BOX_CHANNEL] = 1.0
        return plane

    def _vertical(self, z: Tensor, y: Tensor, look: Appearance, geo: HeadGeometry, channels: int) -> Tensor:
        """Plane 2 at (z, y): the other half of the ellipsoid and the y shading."""
        v, w = ((y - geo.y0) / geo.b) ** 2, ((z - geo.z0) / geo.c) ** 2
        plane = v.new_zeros(look.batch, channels, *z.shape)
        plane[:, cfg.DENSITY_CHANNEL] = (DENSITY_SLOPE * (0.5 - v - 0.5 * w)).clamp(DENSITY_FLOOR, DENSITY_CEILING)
        plane[:, :3] = self._shade(v, look)[:, None].expand(-1, 3, -1, -1)
        plane[:, cfg.BOX_CHANNEL] = 1.0
        return plane

