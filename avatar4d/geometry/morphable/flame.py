"""FLAME 2020 loader: the user's ``generic_model.pkl`` (or an ``.npz`` with the same keys).

The pickle (Python 2, chumpy ``Ch`` objects and scipy sparse matrices) is read with
:mod:`~avatar4d.geometry.morphable.model_files`, which executes nothing. Keys used:
``v_template`` [V, 3], ``shapedirs`` [V, 3, 400] (the first ``shape_basis_size`` = 300 columns
are identity, the rest expression),
``posedirs`` [V, 3, 9 (J - 1)], ``J_regressor`` [J, V], ``weights`` [V, J], ``kintree_table``
[2, J], ``f`` [F, 3].

Posing is a simplified linear blend skinning with only the jaw joint posed (FLAME joint 2; the
global, neck and eye joints stay at rest; head pose is the camera's job here):
``v_shaped = template + shape + expression blendshapes``, ``J = J_regressor v_shaped``,
``v_posed = v_shaped + posedirs . (R_joint - I)`` (only the jaw's 9 entries are non-zero), and
``v = v_posed + w_jaw (R_jaw - I)(v_posed - J_jaw)`` where ``w_jaw`` sums the skinning weights of
the jaw and its descendants. With skinning weights that sum to one this equals full LBS.

UVs come from ``FLAME_texture.npz`` (``vt`` [T, 2], ``ft`` [F, 3]) or an OBJ with ``vt`` and
``f v/vt`` lines; landmarks from DECA's ``landmark_embedding.npy`` (``full_lmk_faces_idx`` and
``full_lmk_bary_coords``, 68 barycentric landmarks), an ``.npz``/``.npy`` with
``landmark_indices`` [68], or indices passed directly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar4d.config import Config
from avatar4d.geometry.morphable.base import (
    NUM_LANDMARKS,
    FaceParams,
    MorphableModel,
    axis_angle_to_matrix,
    blendshape_offsets,
    default_expression_names,
    orient_faces_outward,
)
from avatar4d.geometry.morphable.model_files import load_numpy_file_safely, load_pickle_safely

logger = logging.getLogger(__name__)

FLAME_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


@dataclasses.dataclass
class FlameConfig(Config):
    """How to read a FLAME model: basis sizes, the jaw joint and a similarity into the world frame
    (``world = scale * flame + translation``; FLAME is in metres with the origin near the neck)."""

    num_identity: int = 300
    num_expression: int = 100
    shape_basis_size: int = 300
    jaw_joint: int = 2
    scale: float = 1.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _load_model_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"FLAME model file not found: {path}")
    data = load_numpy_file_safely(path) if path.suffix in (".npz", ".npy") else load_pickle_safely(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of FLAME arrays, got {type(data).__name__}")
    missing = [key for key in FLAME_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a FLAME model, missing key(s) {missing}")
    return data


def read_obj_uv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vt [T, 2], face vertex indices [F, 3], face uv indices [F, 3]) of a triangle OBJ, 0-based."""
    uvs, faces, uv_faces = [], [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "vt":
            uvs.append([float(parts[1]), float(parts[2])])
        elif parts[0] == "f":
            corners = [p.split("/") for p in parts[1:]]
            if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                raise ValueError(f"{path}: only triangles with v/vt indices are supported: {line!r}")
            faces.append([int(c[0]) - 1 for c in corners])
            uv_faces.append([int(c[1]) - 1 for c in corners])
    if not uvs or not faces:
        raise ValueError(f"{path}: OBJ has no vt or f lines")
    return np.asarray(uvs), np.asarray(faces, dtype=np.int64), np.asarray(uv_faces, dtype=np.int64)


def read_uv_layout(path: str | Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UVs [T, 2] and UV faces [F, 3] from ``FLAME_texture.npz`` (vt, ft) or an OBJ."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"UV file not found: {path}")
    if path.suffix.lower() == ".obj":
        uv, obj_faces, uv_faces = read_obj_uv(path)
        if obj_faces.shape != faces.shape or not np.array_equal(obj_faces, faces):
            raise ValueError(f"{path}: OBJ faces do not match the model's {len(faces)} faces")
    else:
        data = load_numpy_file_safely(path)
        if not isinstance(data, dict) or "vt" not in data or "ft" not in data:
            raise ValueError(f"{path}: expected 'vt' and 'ft' arrays (FLAME_texture.npz)")
        uv, uv_faces = np.asarray(data["vt"], dtype=np.float64), np.asarray(data["ft"], dtype=np.int64)
    if uv.ndim != 2 or uv.shape[1] != 2 or uv_faces.shape != faces.shape:
        raise ValueError(f"{path}: UVs {uv.shape} / UV faces {uv_faces.shape} do not fit {len(faces)} faces")
    if uv_faces.min() < 0 or uv_faces.max() >= len(uv):
        raise ValueError(f"{path}: UV face indices out of range for {len(uv)} UVs")
    return uv, uv_faces


def read_landmarks(source: str | Path | np.ndarray | Tensor, num_vertices: int,
                   faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(vertex indices [68], barycentric face indices [68] or None, barycentric weights [68, 3] or
    None) from a landmark embedding file or an index array."""
    if isinstance(source, (str, Path)):
        data = load_numpy_file_safely(source)
        if isinstance(data, dict):
            for faces_key, bary_key in (("full_lmk_faces_idx", "full_lmk_bary_coords"),
                                        ("lmk_face_idx", "lmk_b_coords")):
                if faces_key in data and bary_key in data:
                    face_idx = np.asarray(data[faces_key], dtype=np.int64).reshape(-1)
                    bary = np.asarray(data[bary_key], dtype=np.float64).reshape(-1, 3)
                    if len(face_idx) != NUM_LANDMARKS or len(bary) != NUM_LANDMARKS:
                        raise ValueError(f"{source}: {faces_key} holds {len(face_idx)} landmarks, need 68")
                    if face_idx.min() < 0 or face_idx.max() >= len(faces):
                        raise ValueError(f"{source}: landmark face index out of range")
                    vertex_idx = faces[face_idx, np.argmax(bary, axis=1)]
                    return vertex_idx, face_idx, bary
            if "landmark_indices" not in data:
                raise ValueError(f"{source}: no landmark keys (full_lmk_faces_idx/full_lmk_bary_coords "
                                 f"or landmark_indices); found {sorted(data)}")
            data = data["landmark_indices"]
        source = data
    indices = np.asarray(source.cpu() if isinstance(source, Tensor) else source).astype(np.int64).reshape(-1)
    if len(indices) != NUM_LANDMARKS:
        raise ValueError(f"landmark indices must have 68 entries, got {len(indices)}")
    if indices.min() < 0 or indices.max() >= num_vertices:
        raise ValueError(f"landmark indices out of range for {num_vertices} vertices")
    return indices, None, None


def _validated_arrays(data: dict[str, Any], config: FlameConfig) -> dict[str, np.ndarray]:
    """The FLAME arrays as float64 / int64 numpy, with shapes and the config checked."""
    arrays = {key: np.asarray(data[key], dtype=np.int64 if key in ("kintree_table", "f") else np.float64)
              for key in FLAME_KEYS}
    num_vertices, num_joints = arrays["v_template"].shape[0], arrays["J_regressor"].shape[0]
    expected = {"v_template": (num_vertices, 3), "J_regressor": (num_joints, num_vertices),
                "weights": (num_vertices, num_joints), "posedirs": (num_vertices, 3, 9 * (num_joints - 1)),
                "kintree_table": (2, num_joints)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"FLAME {key} has shape {arrays[key].shape}, expected {shape}")
    shapedirs, faces = arrays["shapedirs"], arrays["f"]
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_vertices, 3):
        raise ValueError(f"FLAME shapedirs must be [{num_vertices}, 3, K], got {shapedirs.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= num_vertices:
        raise ValueError(f"FLAME f must be [F, 3] vertex indices below {num_vertices}")
    available_expression = shapedirs.shape[2] - config.shape_basis_size
    if not (0 < config.num_identity <= config.shape_basis_size
            and 0 <= config.num_expression <= available_expression):
        raise ValueError(f"FLAME file has {config.shape_basis_size} shape and {available_expression} "
                         f"expression components; asked for {config.num_identity} and {config.num_expression}")
    if not 0 < config.jaw_joint < num_joints:
        raise ValueError(f"jaw_joint {config.jaw_joint} out of range for {num_joints} joints")
    return arrays


class FlameModel(MorphableModel):
    """FLAME with shape/expression blendshapes, jaw pose correctives and jaw skinning."""

    missing_uv_message = "this FLAME model was loaded without UVs; pass texture_path (FLAME_texture.npz or an OBJ)"
    missing_landmarks_message = "this FLAME model was loaded without landmarks; pass landmark_path or landmark_indices"

    def __init__(self, data: dict[str, Any], config: FlameConfig | None = None, *,
                 uv: tuple[np.ndarray, np.ndarray] | None = None,
                 landmarks: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None = None) -> None:
        super().__init__()
        self.config = config = config or FlameConfig()
        arrays = _validated_arrays(data, config)
        template, shapedirs, file_faces = arrays["v_template"], arrays["shapedirs"], arrays["f"]
        self.num_joints = num_joints = arrays["J_regressor"].shape[0]
        jaw_subtree = {config.jaw_joint}
        for joint in range(num_joints):  # FLAME lists parents before children
            if arrays["kintree_table"][0, joint] in jaw_subtree:
                jaw_subtree.add(joint)
        scale, shift = config.scale, np.asarray(config.translation, dtype=np.float64)
        faces = orient_faces_outward(template, file_faces)
        as_float = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        start, stop = config.shape_basis_size, config.shape_basis_size + config.num_expression
        self.register_shape_space(template * scale + shift, shapedirs[:, :, :config.num_identity] * scale,
                                  shapedirs[:, :, start:stop] * scale)
        self.register_constant("pose_basis", as_float(arrays["posedirs"] * scale))
        self.register_constant("joint_regressor", as_float(arrays["J_regressor"]))
        self.register_constant("jaw_weights", as_float(arrays["weights"][:, sorted(jaw_subtree)].sum(axis=1)))
        if uv is not None and not np.array_equal(faces, file_faces):
            uv = (uv[0], uv[1][:, [0, 2, 1]])
        vertex_idx, face_idx, bary = landmarks if landmarks is not None else (None, None, None)
        self.register_topology(faces, uv=uv, landmark_indices=vertex_idx)
        self.register_constant("landmark_face_vertices",
                               None if face_idx is None else torch.tensor(file_faces[face_idx], dtype=torch.long))
        self.register_constant("landmark_barycentrics", None if bary is None else as_float(bary))
        self.expression_names = default_expression_names(config.num_expression)

    def vertices(self, params: FaceParams) -> Tensor:
        """Blendshape sum, jaw pose correctives, then the jaw rotation skinned about its joint."""
        params = self.prepare_params(params)
        batch = params.batch_size
        shaped = self.blend_shapes(params)  # [B, V, 3]
        joints = torch.einsum("jv,bvc->bjc", self.joint_regressor, shaped)  # [B, J, 3]
        rotation = axis_angle_to_matrix(params.jaw)  # [B, 3, 3]
        eye = torch.eye(3, dtype=shaped.dtype, device=shaped.device)
        pose_feature = shaped.new_zeros(batch, self.num_joints - 1, 9)  # [B, J-1, 9]
        pose_feature[:, self.config.jaw_joint - 1] = (rotation - eye).reshape(batch, 9)
        posed = shaped + blendshape_offsets(self.pose_basis, pose_feature.reshape(batch, -1))  # [B, V, 3]
        pivot = joints[:, self.config.jaw_joint, None]  # [B, 1, 3]
        jaw_motion = (posed - pivot) @ (rotation - eye).transpose(1, 2)  # [B, V, 3]
        return posed + self.jaw_weights[None, :, None] * jaw_motion

    def landmarks(self, vertices: Tensor) -> Tensor:
        """[B, 68, 3]: barycentric landmarks when an embedding was given, else vertex lookups."""
        if self.landmark_barycentrics is None:
            return super().landmarks(vertices)
        corners = vertices[:, self.landmark_face_vertices]  # [B, 68, 3 corners, 3]
        return (corners * self.landmark_barycentrics[None, :, :, None]).sum(dim=2)


def load_flame(path: str | Path, *, texture_path: str | Path | None = None,
               landmark_path: str | Path | None = None, landmark_indices: np.ndarray | Tensor | None = None,
               config: FlameConfig | None = None) -> FlameModel:
    """Load FLAME from ``generic_model.pkl`` (safely) or an ``.npz`` with the same keys."""
    if landmark_path is not None and landmark_indices is not None:
        raise ValueError("give landmark_path or landmark_indices, not both")
    data = _load_model_dict(Path(path))
    faces = np.asarray(data["f"], dtype=np.int64)
    num_vertices = np.asarray(data["v_template"]).shape[0]
    uv = read_uv_layout(texture_path, faces) if texture_path is not None else None
    source = landmark_path if landmark_path is not None else landmark_indices
    landmarks = read_landmarks(source, num_vertices, faces) if source is not None else None
    model = FlameModel(data, config, uv=uv, landmarks=landmarks)
    logger.info("loaded FLAME from %s: %d vertices, %d identity, %d expression components",
                path, model.num_vertices, model.identity_dim, model.expression_dim)
    return model
