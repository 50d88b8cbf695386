"""FaceVerse loader: ``faceverse_simple_v2.npy`` / ``faceverse_v3*.npy`` (an ``np.save``'d dict).

The dict is read with the restricted unpickler (:mod:`~avatar4d.geometry.morphable.model_files`),
never with ``allow_pickle=True``. Keys used (as in LizhenWangT/FaceVerse ``FaceVerseModel``):
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

UV-coordinate image: with the official extra files (``uv_files``: ``v31_face_mask_new.npy`` and
``fv2fl_30.npy``, next to a v3 file that has ``uv_per_ver`` and ``ver_inds``) the model conditions a
generator with the official construction the released Next3D++ GAN was trained on
(:mod:`avatar4d.geometry.morphable.faceverse_uv`); without them, with its UV atlas and coverage alpha.
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
    MorphableModel,
    default_expression_names,
    orient_faces_outward,
)
from avatar4d.geometry.morphable.faceverse_uv import (
    FaceVerseUVFiles,
    FaceVerseUVImage,
    load_official_uv_files,
    official_vertex_attributes,
)
from avatar4d.geometry.morphable.model_files import load_numpy_file_safely

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

    supports_jaw = False  # no jaw joint: vertices() is the blendshape sum and ignores params.jaw
    missing_uv_message = "this FaceVerse file has no UVs ('uv'/'tri_uv' or 'uv_per_ver')"
    missing_landmarks_message = "this FaceVerse file has no 68/66-point 'keypoints'; pass landmark_indices"

    def __init__(self, data: dict[str, Any], config: FaceVerseConfig | None = None, *,
                 landmark_indices: np.ndarray | Tensor | None = None, uv_files: FaceVerseUVFiles | None = None) -> None:
        super().__init__()
        self.config = config = config or FaceVerseConfig()
        self.official_uv: tuple[np.ndarray, np.ndarray] | None = None  # (vertex attributes [V, 3], fv2fl [4, 4])
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
        self.register_shape_space(mean, id_base, ex_base)
        if landmark_indices is not None:
            landmarks = np.asarray(landmark_indices.cpu() if isinstance(landmark_indices, Tensor)
                                   else landmark_indices, dtype=np.int64).reshape(-1)
            if len(landmarks) != NUM_LANDMARKS:
                raise ValueError(f"landmark_indices must have 68 entries, got {len(landmarks)}")
        else:
            landmarks = _keypoints_to_ibug68(data["keypoints"]) if "keypoints" in data else None
        if landmarks is not None and (landmarks.min() < 0 or landmarks.max() >= num_vertices):
            raise ValueError(f"FaceVerse landmark indices out of range for {num_vertices} vertices")
        self.register_topology(oriented, uv=None if uv is None else (uv, uv_faces), landmark_indices=landmarks)
        names = [str(n) for n in data.get("exp_name_list", [])]
        self.expression_names = names if len(names) == ex_base.shape[2] else default_expression_names(ex_base.shape[2])
        if uv_files is not None:
            missing = [key for key in ("uv_per_ver", "ver_inds") if key not in data]
            if missing:
                raise ValueError(f"the official FaceVerse UV image needs a v3 model file with {missing}")
            face_mask, fv2fl = load_official_uv_files(uv_files)
            self.official_uv = (official_vertex_attributes(np.asarray(data["uv_per_ver"]), face_mask,
                                                           np.asarray(data["ver_inds"])), fv2fl)

    def to_model_frame(self, vertices: Tensor) -> Tensor:
        """World vertices [B, V, 3] → the FaceVerse file's own frame (inverse of :class:`FaceVerseConfig`)."""
        cfg = self.config
        axes = torch.tensor([1.0, -1.0, -1.0] if cfg.flip_yz else [1.0, 1.0, 1.0], dtype=vertices.dtype,
                            device=vertices.device)
        translation = torch.tensor(cfg.translation, dtype=vertices.dtype, device=vertices.device)
        return (vertices - translation) / (axes * cfg.scale)

    def uv_image_builder(self, view: Any, resolution: int, backend: str = "auto") -> Any:
        """The official FaceVerse v3 construction when its files were given, else the UV atlas with coverage."""
        if self.official_uv is None:
            return super().uv_image_builder(view, resolution, backend)
        attributes, fv2fl = self.official_uv
        return FaceVerseUVImage(self.faces, attributes, fv2fl, resolution, backend, to_model_frame=self.to_model_frame)

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



def load_faceverse(path: str | Path, *, config: FaceVerseConfig | None = None,
                   landmark_indices: np.ndarray | Tensor | None = None,
                   uv_files: FaceVerseUVFiles | None = None) -> FaceVerseModel:
    """Load a FaceVerse model file (``.npy`` dict, or ``.npz`` with the same keys) safely; ``uv_files``
    (the official mask and fv2fl files) select the official UV-coordinate image."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FaceVerse model file not found: {path}")
    data = load_numpy_file_safely(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an np.save'd dict of FaceVerse arrays, got {type(data).__name__}")
    missing = [key for key in FACEVERSE_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a FaceVerse model, missing key(s) {missing}")
    model = FaceVerseModel(data, config, landmark_indices=landmark_indices, uv_files=uv_files)
    logger.info("loaded FaceVerse from %s: %d vertices, %d identity, %d expression components",
                path, model.num_vertices, model.identity_dim, model.expression_dim)
    return model
