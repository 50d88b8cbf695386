"""The 68 iBUG landmarks of the procedural head, picked as vertices near target face positions.

iBUG-68 layout (left/right are the subject's; the subject's right is -x, image left):
0-16 jaw contour from the right ear-side over the chin (8) to the left; 17-21 right brow and
22-26 left brow (each from the image-left end to the image-right end); 27-30 nose bridge down to
the tip (30, the most forward vertex); 31-35 nostril base from right to left; 36-41 right eye
(36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower lid); 42-47 left eye (42 inner
corner, 43-44 upper lid, 45 outer corner, 46-47 lower lid); 48-59 outer lips (48 right corner,
49-53 upper lip, 54 left corner, 55-59 lower lip); 60-67 inner lips (60 and 64 corners).
"""

from __future__ import annotations

import numpy as np

from avatar4d.geometry.morphable.procedural_mesh import FaceLayout

IBUG_GROUPS = {
    "jaw": range(0, 17), "right_brow": range(17, 22), "left_brow": range(22, 27),
    "nose_bridge": range(27, 31), "nostrils": range(31, 36), "right_eye": range(36, 42),
    "left_eye": range(42, 48), "outer_lips": range(48, 60), "inner_lips": range(60, 68),
}


def _eye_targets(layout: FaceLayout, side: float) -> list[tuple[float, float]]:
    """Six (x, y) targets of one eye in iBUG order; side = -1 right eye, +1 left eye."""
    cx, hw = side * layout.eye_x, layout.eye_half_width
    corner_y = layout.eye_y - 0.002
    up, lo = layout.upper_lid_y, layout.lower_lid_y
    # Right eye: 36 outer, 37-38 upper, 39 inner, 40-41 lower. Left eye: 42 inner, 43-44 upper,
    # 45 outer, 46-47 lower. Both run from image left to right along the upper lid.
    return [(cx - hw, corner_y), (cx - hw / 3, up), (cx + hw / 3, up), (cx + hw, corner_y),
            (cx + hw / 3, lo), (cx - hw / 3, lo)]


def landmark_targets(layout: FaceLayout) -> np.ndarray:
    """[68, 2] (x, y) targets on the face in iBUG order (index 30, the nose tip, is a placeholder:
    it is chosen as the most forward vertex instead)."""
    targets: list[tuple[float, float]] = []
    angles = np.linspace(0.0, np.pi, 17)
    targets += [(-0.235 * np.cos(a), -0.03 - 0.29 * np.sin(a)) for a in angles]
    brow_x = np.linspace(0.15, 0.035, 5)
    brow_y = layout.brow_y + np.array([-0.012, 0.0, 0.006, 0.004, 0.0])
    targets += [(-bx, by) for bx, by in zip(brow_x, brow_y, strict=True)]
    targets += [(bx, by) for bx, by in zip(brow_x[::-1], brow_y[::-1], strict=True)]
    bridge_y = np.linspace(layout.eye_y + 0.005, layout.nose_tip_y, 4)
    targets += [(0.0, by) for by in bridge_y]
    nostril_y = layout.nose_tip_y - 0.024
    targets += [(nx, nostril_y + 0.004 * (abs(nx) > 0.02)) for nx in np.linspace(-0.028, 0.028, 5)]
    targets += _eye_targets(layout, -1.0) + _eye_targets(layout, 1.0)
    mw, my = layout.mouth_half_width, layout.mouth_y
    upper_outer, lower_outer = my + 0.022, my - 0.026
    targets += [(-mw, my), (-0.6 * mw, upper_outer - 0.004), (-0.25 * mw, upper_outer), (0.0, upper_outer - 0.002),
                (0.25 * mw, upper_outer), (0.6 * mw, upper_outer - 0.004), (mw, my),
                (0.6 * mw, lower_outer + 0.006), (0.25 * mw, lower_outer), (0.0, lower_outer),
                (-0.25 * mw, lower_outer), (-0.6 * mw, lower_outer + 0.006)]
    inner = mw - 0.01
    targets += [(-inner, my), (-0.4 * mw, my + 0.006), (0.0, my + 0.006), (0.4 * mw, my + 0.006), (inner, my),
                (0.4 * mw, my - 0.006), (0.0, my - 0.006), (-0.4 * mw, my - 0.006)]
    return np.asarray(targets, dtype=np.float64)


def pick_landmark_vertices(positions: np.ndarray, directions: np.ndarray, layout: FaceLayout) -> np.ndarray:
    """[68] distinct vertex indices nearest (in the frontal x-y projection) to the targets,
    among forward-facing vertices; the nose tip (30) is the most forward vertex."""
    targets = landmark_targets(layout)
    candidates = np.flatnonzero(directions[:, 2] > 0.05)
    chosen: list[int] = []
    nose_tip = int(np.argmax(positions[:, 2]))
    for k, (tx, ty) in enumerate(targets):
        if k == 30:
            chosen.append(nose_tip)
            continue
        distance = (positions[candidates, 0] - tx) ** 2 + (positions[candidates, 1] - ty) ** 2
        for index in candidates[np.argsort(distance, kind="stable")]:
            if index not in chosen and index != nose_tip:
                chosen.append(int(index))
                break
    return np.asarray(chosen, dtype=np.int64)
