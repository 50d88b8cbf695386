"""Triplane volume rendering (EG3D / Next3D / Next3D++): plane sampling, the OSG decoder, camera
rays, stratified + importance sampling and MipRayMarcher2 compositing, and parametric triplanes
(static triplane + UV-space texture composed with an expression's mesh)."""

from avatar4d.rendering.compositing import RayMarchResult, activate_density, march_rays
from avatar4d.rendering.decoder import OSGDecoder
from avatar4d.rendering.parametric import FaceBox, ParametricTriplane, blend_into_frontal_plane, fill_holes
from avatar4d.rendering.planes import (
    PLANE_CONVENTIONS,
    axis_pairs_from_plane_axes,
    plane_axis_pairs,
    sample_planes,
)
from avatar4d.rendering.rays import camera_rays
from avatar4d.rendering.renderer import RENDERING_PRESETS, RenderingConfig, RenderOutput, TriplaneRenderer
from avatar4d.rendering.sampling import (
    importance_depths,
    merge_samples,
    resolve_ray_range,
    sample_pdf,
    stratified_depths,
)

__all__ = [
    "PLANE_CONVENTIONS",
    "FaceBox",
    "ParametricTriplane",
    "blend_into_frontal_plane",
    "fill_holes",
    "RENDERING_PRESETS",
    "OSGDecoder",
    "RayMarchResult",
    "RenderOutput",
    "RenderingConfig",
    "TriplaneRenderer",
    "activate_density",
    "axis_pairs_from_plane_axes",
    "camera_rays",
    "importance_depths",
    "march_rays",
    "merge_samples",
    "plane_axis_pairs",
    "resolve_ray_range",
    "sample_pdf",
    "sample_planes",
    "stratified_depths",
]
