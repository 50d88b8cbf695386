"""Morphable head models: the interface, the shipped procedural head, FLAME and FaceVerse loaders."""

from avatar4d.checkpoint.safe_pickle import PickleReadError, UnsafePickleError
from avatar4d.geometry.morphable.base import (
    NUM_LANDMARKS,
    FaceParams,
    MorphableModel,
    axis_angle_to_matrix,
    orient_faces_outward,
    save_obj,
)
from avatar4d.geometry.morphable.faceverse import FaceVerseConfig, FaceVerseModel, load_faceverse
from avatar4d.geometry.morphable.flame import FlameConfig, FlameModel, load_flame
from avatar4d.geometry.morphable.model_files import load_numpy_file_safely, load_pickle_safely
from avatar4d.geometry.morphable.procedural import (
    PROCEDURAL_HEAD_PRESETS,
    ProceduralHead,
    ProceduralHeadConfig,
    default_head_model,
)

__all__ = [
    "NUM_LANDMARKS", "FaceParams", "MorphableModel", "axis_angle_to_matrix", "orient_faces_outward", "save_obj",
    "FaceVerseConfig", "FaceVerseModel", "load_faceverse",
    "FlameConfig", "FlameModel", "load_flame",
    "PROCEDURAL_HEAD_PRESETS", "ProceduralHead", "ProceduralHeadConfig", "default_head_model",
    "PickleReadError", "UnsafePickleError", "load_numpy_file_safely", "load_pickle_safely",
]
