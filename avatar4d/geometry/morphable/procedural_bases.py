"""Identity and expression blendshapes and jaw skinning weights of the procedural head.

Every basis is a smooth per-vertex displacement field [V, 3] evaluated on the neutral head.
Identity components are global shape changes (one unit is roughly one standard deviation of
natural variation). Expression components are multiplied by a support weight that is exactly
zero for ``dz <= 0.15`` (direction from the head centre), so the back of the head never moves.
One unit of an expression coefficient is the full expression (1 = eyes shut for a blink).
"""

from __future__ import annotations

import numpy as np

from avatar4d.geometry.morphable.procedural_mesh import (
    FaceLayout,
    FeatureAmplitudes,
    gauss2,
    smoothstep,
)

IDENTITY_NAMES = [
    "head_width", "head_height", "head_depth", "jaw_width", "face_length", "eye_spacing",
    "nose_size", "lip_fullness", "eye_depth", "brow_ridge", "cheekbones", "chin_prominence",
]
EXPRESSION_NAMES = [
    "jaw_open", "smile", "blink_left", "blink_right", "brow_raise", "frown",
    "mouth_pucker", "mouth_stretch", "cheek_puff", "squint",
]
# Identity components that scale a sculpted feature: relative standard deviation of its height.
_FEATURE_COMPONENTS = {
    "nose_size": ("nose", 0.2), "lip_fullness": ("lips", 0.3), "eye_depth": ("eye_socket", 0.3),
    "brow_ridge": ("brow_ridge", 0.5), "cheekbones": ("cheekbones", 0.6), "chin_prominence": ("chin", 0.5),
}


def _field(dx: np.ndarray | float = 0.0, dy: np.ndarray | float = 0.0, dz: np.ndarray | float = 0.0,
           size: int | None = None) -> np.ndarray:
    parts = [np.broadcast_to(np.asarray(c, dtype=np.float64), (size,)) for c in (dx, dy, dz)]
    return np.stack(parts, axis=1)


def expression_support(directions: np.ndarray) -> np.ndarray:
    """[V] weight of facial motion: 0 exactly for dz <= 0.15, 1 for dz >= 0.45."""
    return smoothstep(0.15, 0.45, directions[:, 2])


def jaw_weights(positions: np.ndarray, layout: FaceLayout) -> np.ndarray:
    """[V] skinning weight of the jaw: 0 above the line from the jaw hinge to the mouth line (seen
    from the side), rising to 1 below it over a band that is narrow at the lips (so the upper lip
    stays) and wider towards the cheeks; 0 behind z = -0.09 (rising to 1 at z = 0.12)."""
    _, pivot_y, pivot_z = layout.jaw_pivot
    front = positions[:, 2] > 0.0
    mouth_vertex = np.argmin(np.abs(positions[:, 1] - layout.mouth_y) + 10.0 * np.abs(positions[:, 0])
                             + 10.0 * ~front)
    direction = np.array([positions[mouth_vertex, 2] - pivot_z, layout.mouth_y - pivot_y])  # (z, y)
    direction /= np.linalg.norm(direction)
    below = np.array([direction[1], -direction[0]])  # normal of the hinge-mouth line, pointing down
    rel = np.stack([positions[:, 2] - pivot_z, positions[:, 1] - pivot_y], axis=1)
    signed_distance = rel @ below
    band = 0.016 + 0.5 * np.maximum(np.abs(positions[:, 0]) - 0.06, 0.0)  # narrow at the lips only
    across = np.clip((signed_distance + 0.006) / band, 0.0, 1.0)
    return across * across * (3.0 - 2.0 * across) * smoothstep(-0.09, 0.12, positions[:, 2])


def identity_basis(positions: np.ndarray, patterns: dict[str, np.ndarray], layout: FaceLayout,
                   amplitudes: FeatureAmplitudes) -> np.ndarray:
    """[V, 3, 12] identity blendshapes in the order of :data:`IDENTITY_NAMES`."""
    x, y, z = positions.T
    n = len(positions)
    below_eyes = 1.0 - smoothstep(layout.mouth_y, layout.eye_y, y)
    eye_window = gauss2(np.abs(x), y, layout.eye_x, layout.eye_y, 0.05, 0.04)
    fields = {
        "head_width": _field(dx=0.04 * x, size=n),
        "head_height": _field(dy=0.03 * (y - layout.centre_y), size=n),
        "head_depth": _field(dz=0.035 * z, size=n),
        "jaw_width": _field(dx=0.08 * x * below_eyes, size=n),
        "face_length": _field(dy=0.04 * np.minimum(y - layout.eye_y, 0.0), size=n),
        "eye_spacing": _field(dx=0.006 * np.tanh(x / 0.02) * eye_window, size=n),
    }
    for name, (feature, relative_std) in _FEATURE_COMPONENTS.items():
        height = getattr(amplitudes, feature) * relative_std
        fields[name] = _field(dz=height * patterns[feature], size=n)
    return np.stack([fields[name] for name in IDENTITY_NAMES], axis=2)


def _blink(x: np.ndarray, y: np.ndarray, side: float, layout: FaceLayout) -> np.ndarray:
    """Upper lid down onto the lower lid; ``side`` is +1 for the left eye (+x), -1 for the right."""
    lower, upper = layout.lower_lid_y, layout.upper_lid_y
    gap = upper - lower
    closure = 0.95
    across = np.abs(x - side * layout.eye_x)
    window = 1.0 - smoothstep(0.8 * layout.eye_half_width, 1.6 * layout.eye_half_width, across)
    between = (y >= lower) & (y <= upper)
    above = y > upper
    fall = 1.0 - smoothstep(0.0, 0.045, y - upper)
    dy = np.where(between, -closure * (y - lower), np.where(above, -closure * gap * fall, 0.0))
    return window * dy


def expression_basis(positions: np.ndarray, directions: np.ndarray, layout: FaceLayout,
                     jaw: np.ndarray) -> np.ndarray:
    """[V, 3, 10] expression blendshapes in the order of :data:`EXPRESSION_NAMES`."""
    x, y, _ = positions.T
    ax, sx = np.abs(x), np.tanh(x / 0.012)  # smooth sign: no tearing at x = 0
    n = len(positions)
    corners = gauss2(ax, y, layout.mouth_half_width, layout.mouth_y, 0.03, 0.025)
    lips = gauss2(x, y, 0.0, layout.mouth_y, 0.065, 0.032)
    brows = np.exp(-((y - layout.brow_y - 0.01) / 0.035) ** 2) * (1.0 - smoothstep(0.14, 0.19, ax))
    inner_brows = brows * (1.0 - smoothstep(0.03, 0.12, ax))
    cheeks = gauss2(ax, y, 0.09, -0.07, 0.04, 0.04)
    puff = gauss2(ax, y, 0.09, -0.12, 0.045, 0.045)
    below_lids = gauss2(ax, y, layout.eye_x, layout.lower_lid_y - 0.012, 0.035, 0.014)
    fields = {
        "jaw_open": _field(dy=-0.03 * jaw, dz=-0.006 * jaw, size=n),
        "smile": _field(dx=0.012 * sx * corners, dy=0.014 * corners + 0.006 * cheeks,
                        dz=-0.004 * corners + 0.005 * cheeks, size=n),
        "blink_left": _field(dy=_blink(x, y, 1.0, layout), size=n),
        "blink_right": _field(dy=_blink(x, y, -1.0, layout), size=n),
        "brow_raise": _field(dy=0.018 * brows, size=n),
        "frown": _field(dx=-0.008 * np.tanh(x / 0.02) * inner_brows, dy=-0.010 * brows - 0.008 * corners, size=n),
        "mouth_pucker": _field(dx=-0.3 * x * lips, dz=0.015 * lips, size=n),
        "mouth_stretch": _field(dx=0.014 * sx * corners, dy=-0.004 * corners, size=n),
        "cheek_puff": _field(dx=0.012 * sx * puff, dz=0.010 * puff, size=n),
        "squint": _field(dy=0.006 * below_lids + 0.3 * _blink(x, y, 1.0, layout)
                         + 0.3 * _blink(x, y, -1.0, layout), size=n),
    }
    support = expression_support(directions)[:, None]
    return np.stack([fields[name] * support for name in EXPRESSION_NAMES], axis=2)
