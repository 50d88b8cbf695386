"""Geometry: cameras, the morphable head models, mesh utilities and rasterization."""

from avatar4d.geometry.camera import (
    Camera,
    PoseSampler,
    PoseSamplerConfig,
    fov_to_intrinsics,
    look_at,
    orbit_camera,
)
from avatar4d.geometry.mesh import face_normals, vertex_normals
from avatar4d.geometry.morphable import FaceParams, MorphableModel, default_head_model
from avatar4d.geometry.raster import Rasterizer, get_rasterizer, perspective_clip

__all__ = [
    "Camera",
    "FaceParams",
    "MorphableModel",
    "PoseSampler",
    "PoseSamplerConfig",
    "Rasterizer",
    "default_head_model",
    "face_normals",
    "fov_to_intrinsics",
    "get_rasterizer",
    "look_at",
    "orbit_camera",
    "perspective_clip",
    "vertex_normals",
]
