"""Geometry of the procedural head: a sculpted latitude/longitude sphere with a seam-split UV atlas.

Parametrisation: a vertex of ring ``i`` and column ``j`` sits at polar angle ``theta`` (0 at the
crown, pi under the chin) and azimuth ``phi`` (0 facing +z, +pi/2 towards +x, the seam at +-pi
behind the head). Rings and columns are spaced by the inverse CDF of a density that is highest
on the face (eyes, mouth), so the face is well resolved and, since UVs are the *uniform* grid
parameters, the face also takes most of the texture atlas. The two poles are single vertices in
3D; in UV each pole triangle gets its own copy of the pole at the middle of its column, so no UV
triangle is degenerate, and the seam column is duplicated at u = 0 and u = 1.

All arrays here are numpy float64 (built once, cached by :mod:`procedural`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FaceLayout:
    """World positions (x right, y up; subject's left eye at +x) of the facial features."""

    centre_y: float = 0.02
    eye_x: float = 0.095
    eye_y: float = 0.035
    eye_half_width: float = 0.034
    upper_lid_offset: float = 0.012
    lower_lid_offset: float = 0.010
    brow_y: float = 0.095
    nose_root_y: float = 0.06
    nose_tip_y: float = -0.055
    mouth_y: float = -0.165
    mouth_half_width: float = 0.055
    chin_y: float = -0.33
    jaw_pivot: tuple[float, float, float] = (0.0, -0.02, -0.03)

    @property
    def upper_lid_y(self) -> float:
        return self.eye_y + self.upper_lid_offset

    @property
    def lower_lid_y(self) -> float:
        return self.eye_y - self.lower_lid_offset


@dataclasses.dataclass(frozen=True)
class FeatureAmplitudes:
    """Heights (world units, along +z) of the sculpted facial features of the mean head."""

    nose: float = 0.06
    lips: float = 0.011
    eye_socket: float = 0.022
    eyeball: float = 0.012
    brow_ridge: float = 0.012
    cheekbones: float = 0.010
    chin: float = 0.016


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1`` (exactly), cubic in between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss2(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-((x - cx) / sx) ** 2 - ((y - cy) / sy) ** 2)


def _inverse_cdf(density, lo: float, hi: float, samples: np.ndarray) -> np.ndarray:
    """Angles in [lo, hi] at which the normalised cumulative ``density`` equals ``samples``."""
    grid = np.linspace(lo, hi, 4097)
    values = density(grid)
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (values[1:] + values[:-1]) * np.diff(grid))])
    return np.interp(samples, cumulative / cumulative[-1], grid)


def _latitude_density(theta: np.ndarray) -> np.ndarray:
    face_band = np.exp(-((theta - 2.05) / 0.72) ** 4)
    eyes = np.exp(-((theta - 1.52) / 0.12) ** 2)
    mouth = np.exp(-((theta - 1.99) / 0.12) ** 2)
    return 0.3 + 2.0 * face_band + 4.5 * eyes + 3.5 * mouth


def _longitude_density(phi: np.ndarray) -> np.ndarray:
    return 0.45 + 2.2 * np.exp(-(phi / 0.95) ** 4)


@dataclasses.dataclass(frozen=True)
class SphereGrid:
    """Topology and UV atlas of the latitude/longitude grid (no geometry)."""

    theta: np.ndarray  # [V] polar angle per vertex
    phi: np.ndarray  # [V] azimuth per vertex
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    uv_coords: np.ndarray  # [T, 2] float64 in [0, 1], v up
    uv_faces: np.ndarray  # [F, 3] int64


def build_sphere_grid(longitude_segments: int, latitude_rings: int) -> SphereGrid:
    """Vertices: ``latitude_rings * longitude_segments`` ring vertices, then the top and bottom
    poles. Faces: quads split in two between rings, and a fan at each pole."""
    n_lon, n_rings = longitude_segments, latitude_rings
    s = np.arange(n_lon) / n_lon  # UV u of the 3D columns
    t = np.arange(1, n_rings + 1) / (n_rings + 1)  # down from the crown
    phi_col = _inverse_cdf(_longitude_density, -np.pi, np.pi, s)
    theta_row = _inverse_cdf(_latitude_density, 0.0, np.pi, t)
    theta = np.concatenate([np.repeat(theta_row, n_lon), [0.0, np.pi]])
    phi = np.concatenate([np.tile(phi_col, n_rings), [0.0, 0.0]])
    top, bottom = n_rings * n_lon, n_rings * n_lon + 1

    def vid(ring: np.ndarray, col: np.ndarray) -> np.ndarray:
        return ring * n_lon + col % n_lon

    def uvid(ring: np.ndarray, col: np.ndarray) -> np.ndarray:
        return ring * (n_lon + 1) + col

    ring, col = np.meshgrid(np.arange(n_rings - 1), np.arange(n_lon), indexing="ij")
    ring, col = ring.ravel(), col.ravel()
    # Quad (top-left, top-right, bottom-left, bottom-right) -> (TL, BL, BR) and (TL, BR, TR).
    quad_a = np.stack([vid(ring, col), vid(ring + 1, col), vid(ring + 1, col + 1)], axis=1)
    quad_b = np.stack([vid(ring, col), vid(ring + 1, col + 1), vid(ring, col + 1)], axis=1)
    uv_quad_a = np.stack([uvid(ring, col), uvid(ring + 1, col), uvid(ring + 1, col + 1)], axis=1)
    uv_quad_b = np.stack([uvid(ring, col), uvid(ring + 1, col + 1), uvid(ring, col + 1)], axis=1)
    cols = np.arange(n_lon)
    last = np.full(n_lon, n_rings - 1)
    first = np.zeros(n_lon, dtype=np.int64)
    num_ring_uvs = n_rings * (n_lon + 1)
    top_fan = np.stack([np.full(n_lon, top), vid(first, cols), vid(first, cols + 1)], axis=1)
    bottom_fan = np.stack([vid(last, cols), np.full(n_lon, bottom), vid(last, cols + 1)], axis=1)
    uv_top_fan = np.stack([num_ring_uvs + cols, uvid(first, cols), uvid(first, cols + 1)], axis=1)
    uv_bottom_fan = np.stack([uvid(last, cols), num_ring_uvs + n_lon + cols, uvid(last, cols + 1)], axis=1)
    faces = np.concatenate([top_fan, quad_a, quad_b, bottom_fan]).astype(np.int64)
    uv_faces = np.concatenate([uv_top_fan, uv_quad_a, uv_quad_b, uv_bottom_fan]).astype(np.int64)

    u_grid = np.arange(n_lon + 1) / n_lon
    ring_uv = np.stack(np.meshgrid(u_grid, 1.0 - t, indexing="xy"), axis=-1).reshape(-1, 2)
    pole_u = (cols + 0.5) / n_lon
    pole_uv = np.concatenate([np.stack([pole_u, np.ones(n_lon)], 1), np.stack([pole_u, np.zeros(n_lon)], 1)])
    uv_coords = np.concatenate([ring_uv, pole_uv])
    return SphereGrid(theta=theta, phi=phi, faces=faces, uv_coords=uv_coords, uv_faces=uv_faces)


def unit_directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """[V, 3] unit directions (x, y, z) = (sin t sin p, cos t, sin t cos p)."""
    return np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), np.sin(theta) * np.cos(phi)], axis=1)


def _signed_power(value: np.ndarray, exponent: np.ndarray | float) -> np.ndarray:
    return np.sign(value) * np.abs(value) ** exponent


def base_surface(directions: np.ndarray, layout: FaceLayout) -> np.ndarray:
    """The featureless head [V, 3]: a superellipsoid with a flattened face, a tapered jaw and a
    chin that reaches lower at the front than the nape does at the back."""
    dx, dy, dz = directions.T
    ux = _signed_power(dx, 0.9)
    uz = _signed_power(dz, np.where(dz > 0, 0.72, 0.95))
    lower = np.clip(-dy, 0.0, 1.0)
    taper = 1.0 - 0.26 * lower ** 1.5 - 0.06 * np.clip(dy, 0.0, 1.0) ** 2
    x = 0.255 * ux * taper
    chin_drop = 0.30 + 0.11 * smoothstep(0.0, 0.6, dz)
    y = layout.centre_y + np.where(dy > 0, 0.38 * dy, -chin_drop * np.abs(dy) ** 0.8)
    z = uz * np.where(uz > 0, 0.30, 0.34)
    return np.stack([x, y, z], axis=1)


def front_weight(directions: np.ndarray) -> np.ndarray:
    """Where facial features may be sculpted: 0 for dz <= 0.3, 1 for dz >= 0.7."""
    return smoothstep(0.3, 0.7, directions[:, 2])


def feature_patterns(base: np.ndarray, directions: np.ndarray, layout: FaceLayout) -> dict[str, np.ndarray]:
    """Unit-amplitude +z height fields [V] of each facial feature (times :func:`front_weight`)."""
    x, y = base[:, 0], base[:, 1]
    ax = np.abs(x)
    front = front_weight(directions)
    span = layout.nose_root_y - layout.nose_tip_y
    profile = np.clip((layout.nose_root_y - y) / span, 0.0, 1.0)
    nose_height = np.where(y >= layout.nose_tip_y, 0.08 + 0.92 * profile ** 1.6,
                           np.exp(-((y - layout.nose_tip_y) / 0.02) ** 2))
    nose_width = 0.014 + 0.016 * profile
    nose = nose_height * np.exp(-(x / nose_width) ** 2)
    nose += 0.3 * gauss2(ax, y, 0.026, layout.nose_tip_y - 0.012, 0.014, 0.013)
    mouth_window = np.exp(-(x / layout.mouth_half_width) ** 4)
    lips = (np.exp(-((y - layout.mouth_y - 0.014) / 0.011) ** 2)
            + np.exp(-((y - layout.mouth_y + 0.016) / 0.012) ** 2)
            - 0.5 * np.exp(-((y - layout.mouth_y) / 0.005) ** 2)) * mouth_window
    patterns = {
        "nose": nose,
        "lips": lips,
        "eye_socket": -gauss2(ax, y, layout.eye_x, layout.eye_y, 0.045, 0.032),
        "eyeball": gauss2(ax, y, layout.eye_x, layout.eye_y, 0.028, 0.016),
        "brow_ridge": np.exp(-((y - layout.brow_y) / 0.022) ** 2) * np.exp(-(x / 0.13) ** 4),
        "cheekbones": gauss2(ax, y, 0.12, -0.04, 0.05, 0.04),
        "chin": gauss2(x, y, 0.0, layout.chin_y + 0.05, 0.05, 0.035),
    }
    return {name: front * pattern for name, pattern in patterns.items()}


def sculpt(base: np.ndarray, patterns: dict[str, np.ndarray], amplitudes: FeatureAmplitudes) -> np.ndarray:
    """Base surface plus the amplitude-weighted feature heights along +z."""
    height = sum(getattr(amplitudes, name) * pattern for name, pattern in patterns.items())
    return base + np.stack([np.zeros_like(height), np.zeros_like(height), height], axis=1)


def region_masks(positions: np.ndarray, directions: np.ndarray, layout: FaceLayout) -> dict[str, np.ndarray]:
    """Boolean per-vertex masks of the semantic regions of the neutral head."""
    x, y = positions[:, 0], positions[:, 1]
    dz = directions[:, 2]
    front = dz > 0.3
    eye_box = dict(rx=layout.eye_half_width * 1.35, ry=0.028)
    masks = {
        "face": (dz > 0.05) & ((x / 0.26) ** 2 + ((y + 0.07) / 0.31) ** 2 <= 1.0),
        "left_eye": front & (((x - layout.eye_x) / eye_box["rx"]) ** 2
                             + ((y - layout.eye_y) / eye_box["ry"]) ** 2 <= 1.0),
        "right_eye": front & (((x + layout.eye_x) / eye_box["rx"]) ** 2
                              + ((y - layout.eye_y) / eye_box["ry"]) ** 2 <= 1.0),
        "mouth": front & ((x / (layout.mouth_half_width + 0.02)) ** 2
                          + ((y - layout.mouth_y) / 0.04) ** 2 <= 1.0),
        "nose": front & (np.abs(x) < 0.045) & (y > layout.nose_tip_y - 0.03) & (y < layout.nose_root_y),
        "left_brow": front & (np.abs(y - layout.brow_y) < 0.022) & (x > 0.03) & (x < 0.16),
        "right_brow": front & (np.abs(y - layout.brow_y) < 0.022) & (x < -0.03) & (x > -0.16),
        "back": dz < -0.25,
    }
    return masks
