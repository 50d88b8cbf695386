"""The procedural head: the morphable model shipped with avatar4d, so everything runs offline.

A closed, manifold, watertight head (a sculpted latitude/longitude sphere: cranium, flattened
face, tapered jaw and chin, nose, brow ridge, eye sockets, lips) in the world frame of
:mod:`avatar4d.geometry.camera`: it faces +z, y is up, the chin is near y = -0.34, the crown at
y = 0.40, the widest point at |x| = 0.255 and the nose tip near z = 0.36, inside the triplane box
[-0.5, 0.5]^3. It has 12 identity components, 10 named expressions (``expression_names``) and a
jaw joint: ``FaceParams.jaw`` rotates the lower face about a hinge near the ears with smooth
skinning weights. Everything is deterministic (no randomness) and built once per resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import torch
from torch import Tensor

from avatar4d.config import Config, PresetRegistry
from avatar4d.geometry.morphable.base import FaceParams, MorphableModel, axis_angle_to_matrix
from avatar4d.geometry.morphable.landmarks import pick_landmark_vertices
from avatar4d.geometry.morphable.procedural_bases import (
    EXPRESSION_NAMES,
    IDENTITY_NAMES,
    expression_basis,
    identity_basis,
    jaw_weights,
)
from avatar4d.geometry.morphable.procedural_mesh import (
    FaceLayout,
    FeatureAmplitudes,
    base_surface,
    build_sphere_grid,
    feature_patterns,
    region_masks,
    sculpt,
    unit_directions,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ProceduralHeadConfig(Config):
    """Resolution of the procedural head: vertices = longitude_segments * latitude_rings + 2."""

    longitude_segments: int = 96
    latitude_rings: int = 56

    def __post_init__(self) -> None:
        if self.longitude_segments < 16 or self.latitude_rings < 8:
            raise ValueError(f"procedural head needs >= 16 longitude segments and >= 8 latitude rings, "
                             f"got {self.longitude_segments} and {self.latitude_rings}")


PROCEDURAL_HEAD_PRESETS: PresetRegistry[ProceduralHeadConfig] = PresetRegistry("procedural head")


@PROCEDURAL_HEAD_PRESETS.register("tiny")
def _tiny() -> ProceduralHeadConfig:
    return ProceduralHeadConfig(longitude_segments=64, latitude_rings=36)  # 2,306 vertices


@PROCEDURAL_HEAD_PRESETS.register("default")
def _default() -> ProceduralHeadConfig:
    return ProceduralHeadConfig(longitude_segments=96, latitude_rings=56)  # 5,378 vertices


@PROCEDURAL_HEAD_PRESETS.register("fine")
def _fine() -> ProceduralHeadConfig:
    return ProceduralHeadConfig(longitude_segments=160, latitude_rings=96)  # 15,362 vertices


@dataclasses.dataclass(frozen=True)
class ProceduralHeadArrays:
    """Everything a :class:`ProceduralHead` holds, as read-only numpy arrays."""

    template: np.ndarray  # [V, 3]
    identity_basis: np.ndarray  # [V, 3, Ni]
    expression_basis: np.ndarray  # [V, 3, Ne]
    jaw_weights: np.ndarray  # [V]
    jaw_pivot: np.ndarray  # [3]
    faces: np.ndarray  # [F, 3]
    uv_coords: np.ndarray  # [T, 2]
    uv_faces: np.ndarray  # [F, 3]
    landmark_indices: np.ndarray  # [68]
    region_masks: dict[str, np.ndarray]  # name -> [V] bool


@functools.lru_cache(maxsize=8)
def build_procedural_head_arrays(longitude_segments: int, latitude_rings: int) -> ProceduralHeadArrays:
    """Build (once per resolution, cached) the procedural head's arrays. Deterministic."""
    layout, amplitudes = FaceLayout(), FeatureAmplitudes()
    grid = build_sphere_grid(longitude_segments, latitude_rings)
    directions = unit_directions(grid.theta, grid.phi)
    base = base_surface(directions, layout)
    patterns = feature_patterns(base, directions, layout)
    template = sculpt(base, patterns, amplitudes)
    jaw = jaw_weights(template, layout)
    arrays = ProceduralHeadArrays(
        template=template,
        identity_basis=identity_basis(template, patterns, layout, amplitudes),
        expression_basis=expression_basis(template, directions, layout, jaw),
        jaw_weights=jaw,
        jaw_pivot=np.asarray(layout.jaw_pivot, dtype=np.float64),
        faces=grid.faces,
        uv_coords=grid.uv_coords,
        uv_faces=grid.uv_faces,
        landmark_indices=pick_landmark_vertices(template, directions, layout),
        region_masks=region_masks(template, directions, layout),
    )
    for value in [*(getattr(arrays, f.name) for f in dataclasses.fields(arrays)), *arrays.region_masks.values()]:
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    logger.debug("built procedural head: %d vertices, %d faces", len(template), len(grid.faces))
    return arrays


class ProceduralHead(MorphableModel):
    """The shipped procedural morphable head (see the module docstring)."""

    def __init__(self, config: ProceduralHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProceduralHeadConfig()
        arrays = build_procedural_head_arrays(self.config.longitude_segments, self.config.latitude_rings)
        as_float = functools.partial(torch.tensor, dtype=torch.float32)
        self.register_shape_space(arrays.template, arrays.identity_basis, arrays.expression_basis)
        self.register_constant("jaw_weights", as_float(arrays.jaw_weights))
        self.register_constant("jaw_pivot", as_float(arrays.jaw_pivot))
        self.register_topology(arrays.faces, uv=(arrays.uv_coords, arrays.uv_faces),
                               landmark_indices=arrays.landmark_indices)
        self.region_names = sorted(arrays.region_masks)
        for name in self.region_names:
            self.register_constant(f"_region_{name}", torch.tensor(arrays.region_masks[name], dtype=torch.bool))
        self.identity_names = list(IDENTITY_NAMES)
        self.expression_names = list(EXPRESSION_NAMES)

    @property
    def region_masks(self) -> dict[str, Tensor]:
        """Per-vertex boolean masks: face, mouth, left_eye, right_eye, nose, left_brow,
        right_brow, back (left/right are the subject's; left is +x)."""
        return {name: getattr(self, f"_region_{name}") for name in self.region_names}

    # --- evaluation ---------------------------------------------------------------------------
    def vertices(self, params: FaceParams) -> Tensor:
        """Template + identity + expression blendshapes, then the jaw rotation about its hinge."""
        params = self.prepare_params(params)
        verts = self.blend_shapes(params)  # [B, V, 3]
        rotation = axis_angle_to_matrix(params.jaw)  # [B, 3, 3]
        eye = torch.eye(3, dtype=verts.dtype, device=verts.device)
        relative = verts - self.jaw_pivot  # [B, V, 3]
        jaw_motion = relative @ (rotation - eye).transpose(1, 2)  # [B, V, 3]
        return verts + self.jaw_weights[None, :, None] * jaw_motion


def default_head_model(preset: str = "default") -> ProceduralHead:
    """A new :class:`ProceduralHead` of a named resolution preset (its arrays are cached, so this
    is cheap; each call returns its own module, so ``.to(device)`` never affects other callers)."""
    return ProceduralHead(PROCEDURAL_HEAD_PRESETS.get(preset))
