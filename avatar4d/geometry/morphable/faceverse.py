"""FaceVerse loader: ``faceverse_simple_v2.npy`` / ``faceverse_v3*.npy`` (an ``np.save``'d dict).

The dict is read with the restricted unpickler (:mod:`safe_numpy_pickle`), never with
``allow_pickle=True``. Keys used (as in LizhenWangT/FaceVerse ``FaceVerseModel``):
``meanshape`` (3V values), ``idBase`` [3V, Ni], ``exBase`` [3V, Ne] (x, y, z interleaved per
vertex), ``tri`` [F, 3]; UVs from ``uv`` + ``tri_uv`` (v3) or per-vertex ``uv_per_ver``;
landmarks from ``keypoints`` (68 iBUG indices, or the 66-point layout of v2 that omits the inner
mouth corners 60 and 64, which are then approximated by the outer corners 48 and 54), or passed
explicitly (v3 only ships ``mediapipe_keypoints``); expression names from ``exp_name_list``.

FaceVerse has no jaw joint (jaw opening is part of its expression basis), so ``FaceParams.jaw``
is ignored (``supports_jaw`` is False). v3's separate eyeball rotation is not modelled. Use
:class:`FaceVerseConfig` to bring the model into the world frame (``flip_yz`` turns the v3
frame, y down / z away from the camera, into y up / z towards it; then ``scale`` and
``translation``).
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
    blendshape_offsets,
    orient_faces_outward,
)
from avatar4d.geometry.morphable.safe_numpy_pickle import load_numpy_file_safely

logger = logging.getLogger(__name__)

FACEVERSE_KEYS = ("meanshape", "idBase", "exBase", "tri")
_OPENSEEFACE_66_TO_IBUG_68 = list(range(60)) + [48, 60, 61, 62, 54, 63, 64, 65]


@dataclasses.dataclass
class FaceVerseConfig(Config):
    """Similarity from the FaceVerse frame into the world frame: ``world = scale * flip(fv) + t``."""

    flip_yz: bool = False
    scale: float = 1.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _keypoints_to_ibug68(keypoints: np.ndarray) -> np.ndarray | None:
    keypoints = np.asarray(keypoints, dtype=np.int64).reshape(-1)
    if len(keypoints) == NUM_LANDMARKS:
        return keypoints
    if len(keypoints) == 66:
        return keypoints[_OPENSEEFACE_66_TO_IBUG_68]
    return None


class FaceVerseModel(MorphableModel):
    """Linear FaceVerse shape model: mean + identity + expression blendshapes."""

    def __init__(self, data: dict[str, Any], config: FaceVerseConfig | None = None, *,
                 landmark_indices: np.ndarray | Tensor | None = None) -> None:
        super().__init__()
        self.config = config = config or FaceVerseConfig()
        mean = np.asarray(data["meanshape"], dtype=np.float64).reshape(-1, 3)
        num_vertices = mean.shape[0]
        id_base = np.asarray(data["idBase"], dtype=np.float64)
        ex_base = np.asarray(data["exBase"], dtype=np.float64)
        for key, base in (("idBase", id_base), ("exBase", ex_base)):
            if base.ndim != 2 or base.shape[0] != 3 * num_vertices:
                raise ValueError(f"FaceVerse {key} must be [{3 * num_vertices}, K], got {base.shape}")
        faces = np.asarray(data["tri"], dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"FaceVerse tri must be [F, 3], got {faces.shape}")
        if faces.min() == 1 and faces.max() == num_vertices:
            logger.info("FaceVerse tri looks 1-based; converting to 0-based")
            faces = faces - 1
        if faces.min() < 0 or faces.max() >= num_vertices:
            raise ValueError(f"FaceVerse tri indices out of range for {num_vertices} vertices")
        axes = np.array([1.0, -1.0, -1.0] if config.flip_yz else [1.0, 1.0, 1.0])
        linear = axes * config.scale  # per-axis factor of the similarity
        mean = mean * linear + np.asarray(config.translation)
        id_base = id_base.reshape(num_vertices, 3, -1) * linear[None, :, None]
        ex_base = ex_base.reshape(num_vertices, 3, -1) * linear[None, :, None]
        oriented = orient_faces_outward(mean, faces)
        flipped = not np.array_equal(oriented, faces)
        uv, uv_faces = self._read_uv(data, faces)
        if flipped and uv_faces is not None:
            uv_faces = uv_faces[:, [0, 2, 1]]
        as_float = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.register_constant("template", as_float(mean))
        self.register_constant("identity_basis", as_float(id_base))
        self.register_constant("expression_basis", as_float(ex_base))
        self.register_constant("_faces", torch.tensor(oriented, dtype=torch.long))
        self._has_uv = uv is not None
        self.register_constant("_uv_coords", as_float(uv if uv is not None else np.zeros((0, 2))))
        self.register_constant("_uv_faces", torch.tensor(uv_faces if uv_faces is not None
                                                       else np.zeros((0, 3), dtype=np.int64)))
        if landmark_indices is not None:
            landmarks = np.asarray(landmark_indices.cpu() if isinstance(landmark_indices, Tensor)
                                   else landmark_indices, dtype=np.int64).reshape(-1)
            if len(landmarks) != NUM_LANDMARKS:
                raise ValueError(f"landmark_indices must have 68 entries, got {len(landmarks)}")
        else:
            landmarks = _keypoints_to_ibug68(data["keypoints"]) if "keypoints" in data else None
        if landmarks is not None and (landmarks.min() < 0 or landmarks.max() >= num_vertices):
            raise ValueError(f"FaceVerse landmark indices out of range for {num_vertices} vertices")
        self._has_landmarks = landmarks is not None
        self.register_constant("_landmark_indices", torch.tensor(
            landmarks if landmarks is not None else np.zeros(0, dtype=np.int64), dtype=torch.long))
        names = [str(n) for n in data.get("exp_name_list", [])]
        self.expression_names = names if len(names) == ex_base.shape[2] else [
            f"expression_{k:03d}" for k in range(ex_base.shape[2])]

    @staticmethod
    def _read_uv(data: dict[str, Any], faces: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        if "uv" in data and "tri_uv" in data:
            uv, uv_faces = np.asarray(data["uv"], dtype=np.float64), np.asarray(data["tri_uv"], dtype=np.int64)
        elif "uv_per_ver" in data:
            uv, uv_faces = np.asarray(data["uv_per_ver"], dtype=np.float64), faces.copy()
        else:
            return None, None
        if uv.ndim != 2 or uv.shape[1] != 2 or uv_faces.shape != faces.shape:
            raise ValueError(f"FaceVerse UVs {uv.shape} / UV faces {uv_faces.shape} do not fit {faces.shape} faces")
        if uv_faces.min() < 0 or uv_faces.max() >= len(uv):
            raise ValueError("FaceVerse UV face indices out of range")
        return uv, uv_faces

    @property
    def faces(self) -> Tensor:
        return self._faces

    @property
    def uv_coords(self) -> Tensor:
        if not self._has_uv:
            raise ValueError("this FaceVerse file has no UVs ('uv'/'tri_uv' or 'uv_per_ver')")
        return self._uv_coords

    @property
    def uv_faces(self) -> Tensor:
        if not self._has_uv:
            raise ValueError("this FaceVerse file has no UVs ('uv'/'tri_uv' or 'uv_per_ver')")
        return self._uv_faces

    @property
    def landmark_indices(self) -> Tensor:
        if not self._has_landmarks:
            raise ValueError("this FaceVerse file has no 68/66-point 'keypoints'; pass landmark_indices")
        return self._landmark_indices

    @property
    def num_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def identity_dim(self) -> int:
        return self.identity_basis.shape[2]

    @property
    def expression_dim(self) -> int:
        return self.expression_basis.shape[2]

    @property
    def supports_jaw(self) -> bool:
        return False

    def vertices(self, params: FaceParams) -> Tensor:
        """Mean + identity + expression blendshapes; ``params.jaw`` is ignored (no jaw joint)."""
        self.check_params(params)
        params = params.to(self.template.device, self.template.dtype)
        return (self.template[None]  # [1, V, 3]
                + blendshape_offsets(self.identity_basis, params.identity)  # [B, V, 3]
                + blendshape_offsets(self.expression_basis, params.expression))


def load_faceverse(path: str | Path, *, config: FaceVerseConfig | None = None,
                   landmark_indices: np.ndarray | Tensor | None = None) -> FaceVerseModel:
    """Load a FaceVerse model file (``.npy`` dict, or ``.npz`` with the same keys) safely."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FaceVerse model file not found: {path}")
    data = load_numpy_file_safely(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an np.save'd dict of FaceVerse arrays, got {type(data).__name__}")
    missing = [key for key in FACEVERSE_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a FaceVerse model, missing key(s) {missing}")
    model = FaceVerseModel(data, config, landmark_indices=landmark_indices)
    logger.info("loaded FaceVerse from %s: %d vertices, %d identity, %d expression components",
                path, model.num_vertices, model.identity_dim, model.expression_dim)
    return model
